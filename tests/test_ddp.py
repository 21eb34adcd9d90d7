"""DDP on the CPU: 2 processes (detectron2's ``launch``, gloo) train the tiny demo Mask R-CNN with
``find_unused_parameters=False``; the all-reduced gradients equal a single-process computation."""
from __future__ import annotations

import os
import socket

import torch
from _tools import DEMO, LAZY_TINY, TINY_DATA, TINY_INSTANCE, load_tool, parse

SEED = 1234
NO_FLIP = ["INPUT.RANDOM_FLIP", "none"]  # the same batch in both runs, no random augmentation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(out_dir, *opts):
    from detectron2.engine import default_argument_parser

    from d2reg.engine import setup_cfg

    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(DEMO, "mask_rcnn_vit_tiny_synth.yaml"), *TINY_INSTANCE, *NO_FLIP,
         "OUTPUT_DIR", str(out_dir), *opts]
    )
    return args, setup_cfg(args)


def _batch(cfg):
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get("d2reg_synth_train")[:4]]


def _grads(model, batch, seed):
    from detectron2.utils.events import EventStorage

    torch.manual_seed(seed)  # RPN / ROI sampling
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()


def _worker(out_dir, data_root):
    """Runs in each of the 2 processes."""
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    import d2reg.data
    from d2reg.engine import create_ddp_model

    d2reg.data.register_synthetic_datasets(data_root, **TINY_DATA)
    rank = comm.get_rank()
    assert comm.get_world_size() == 2 and torch.distributed.get_backend() == "gloo"
    args, cfg = _cfg(os.path.join(out_dir, "grad"))
    torch.manual_seed(SEED)
    model = build_model(cfg)
    ddp = create_ddp_model(model, broadcast_buffers=False)  # as DefaultTrainer: find_unused_parameters=False
    assert isinstance(ddp, DistributedDataParallel) and not ddp.find_unused_parameters
    _grads(ddp, _batch(cfg)[2 * rank: 2 * rank + 2], SEED + rank)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(grads, os.path.join(out_dir, f"grads_rank{rank}.pth"))

    # Real training steps under DDP (an unused parameter would make DDP fail on the second
    # iteration), then the distributed COCO evaluation. tools/lazyconfig_train_net.py: its loop wraps
    # CPU models for gloo (detectron2's DefaultTrainer, behind train_net.py, passes GPU device_ids).
    tool = load_tool("lazyconfig_train_net")
    args = parse(tool, "mask_rcnn_vit_tiny_synth.py", *LAZY_TINY, "train.max_iter=3",
                     "dataloader.train.total_batch_size=4", f"train.output_dir={os.path.join(out_dir, 'train')}")
    res = tool.main(args)
    if rank == 0:
        assert "bbox" in res and "segm" in res
        torch.save({"ok": True}, os.path.join(out_dir, "train_ok.pth"))


def test_ddp_two_processes_gloo(tmp_path):
    from detectron2.engine import launch
    from detectron2.modeling import build_model

    import d2reg.data

    data_root = str(tmp_path / "synth")
    launch(_worker, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{_free_port()}",
           args=(str(tmp_path), data_root))
    assert os.path.isfile(tmp_path / "train_ok.pth")
    g0 = torch.load(tmp_path / "grads_rank0.pth")
    g1 = torch.load(tmp_path / "grads_rank1.pth")

    # Single process, same initial weights, each rank's half of the batch with that rank's seed:
    # DDP's gradient is the mean of the per-process gradients.
    d2reg.data.register_synthetic_datasets(data_root, **TINY_DATA)
    try:
        _, cfg = _cfg(tmp_path / "single")
        torch.manual_seed(SEED)
        model = build_model(cfg)
        batch = _batch(cfg)
        per_rank = []
        for r in range(2):
            model.zero_grad(set_to_none=True)
            _grads(model, batch[2 * r: 2 * r + 2], SEED + r)
            per_rank.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    finally:
        d2reg.data.register_synthetic_datasets()
    assert g0.keys() == per_rank[0].keys()
    for name in g0:
        ref = (per_rank[0][name] + per_rank[1][name]) / 2
        torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0)  # replicas hold the same gradient
        torch.testing.assert_close(g0[name], ref, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert not torch.equal(per_rank[0]["roi_heads.box_predictor.cls_score.weight"],
                           per_rank[1]["roi_heads.box_predictor.cls_score.weight"])  # the halves differ
