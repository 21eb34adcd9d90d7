"""EoMT through the real tools: 10 training iterations of the demo EoMT (tiny, 64 px) on the synthetic
panoptic scenes with tools/train_net.py (YACS) and tools/lazyconfig_train_net.py (LazyConfig), the mask
annealing ending on schedule, then ``--eval-only`` on the final weights giving detectron2's PQ table; the
same model as instance segmenter (segm AP, COCOEvaluator) and semantic segmenter (mIoU, SemSegEvaluator);
and the demo's picture."""
from __future__ import annotations

import math

import pytest
import torch
from _tools import TINY_DATA, load_tool, parse

from d2reg.engine import D2RegTrainer
from d2reg.model_zoo import get_config_file

TINY = ["MODEL.D2REG.EMBED_DIM", "64", "MODEL.D2REG.NUM_HEADS", "2", "MODEL.EOMT.NUM_QUERIES", "8",
        "MODEL.EOMT.INPUT_SIZE", "64", "INPUT.IMAGE_SIZE", "64", "MODEL.EOMT.LOSS.NUM_POINTS", "256",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.EOMT.WARMUP_ITERS", "[1, 2]", "DATALOADER.NUM_WORKERS", "0",
        "SEED", "7", "MODEL.DEVICE", "cpu"]
LAZY_TINY = ["model.backbone.embed_dim=64", "model.backbone.num_heads=2", "model.num_queries=8",
             "model.input_size=64", "model.criterion.num_points=256",
             "dataloader.train.mapper.augmentations.input_size=64", "dataloader.train.total_batch_size=2",
             "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "lr_multiplier.warmup_iters=[1,2]",
             "train.seed=7", "train.max_iter=10"]
CONFIG = "eomt_vit_tiny_synth"
PQ_KEYS = {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    import d2reg.data as data

    root = str(tmp_path_factory.mktemp("synth"))
    yield data.register_synthetic_datasets(root, **TINY_DATA)
    data.register_synthetic_datasets()


def _final_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _check_pq(res):
    assert PQ_KEYS <= set(res["panoptic_seg"]) and all(0.0 <= res["panoptic_seg"][k] <= 100.0 for k in PQ_KEYS)


def test_yacs_train_anneal_eval_panoptic(tiny_synth, tmp_path):
    tool = load_tool("train_net")
    out = tmp_path / "train"
    res = tool.main(parse(tool, f"{CONFIG}.yaml", *TINY, "SOLVER.MAX_ITER", "10", "OUTPUT_DIR", str(out)))
    _check_pq(res)
    final = _final_state(out / "model_final.pth")
    assert torch.equal(final["attn_mask_probs"], torch.zeros(2))  # both windows ended before iteration 10
    assert "attn_mask_prob_1" in (out / "metrics.json").read_text()  # the hook logs the probabilities
    res_eval = tool.main(parse(tool, f"{CONFIG}.yaml", *TINY, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                               "OUTPUT_DIR", str(tmp_path / "eval"), flags=("--eval-only",)))
    _check_pq(res_eval)
    assert res_eval["panoptic_seg"] == pytest.approx(res["panoptic_seg"])  # same weights, same numbers


def test_lazy_train_anneal_eval_panoptic(tiny_synth, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    out = tmp_path / "train"
    res = tool.main(parse(tool, f"{CONFIG}.py", *LAZY_TINY, f"train.output_dir={out}"))
    _check_pq(res)
    assert torch.equal(_final_state(out / "model_final.pth")["attn_mask_probs"], torch.zeros(2))
    res_eval = tool.main(parse(tool, f"{CONFIG}.py", *LAZY_TINY, f"train.output_dir={tmp_path / 'eval'}",
                               f"train.init_checkpoint={out / 'model_final.pth'}", flags=("--eval-only",)))
    assert res_eval["panoptic_seg"] == pytest.approx(res["panoptic_seg"])


@pytest.mark.parametrize("task, classes, data, metric", [
    ("instance", "3", "d2reg_synth", ("segm", "AP")),
    ("semantic", "4", "d2reg_synth_sem_seg", ("sem_seg", "mIoU")),
])
def test_yacs_instance_and_semantic(tiny_synth, tmp_path, task, classes, data, metric):
    tool = load_tool("train_net")
    opts = [*TINY, "MODEL.EOMT.TASK", task, "MODEL.EOMT.NUM_CLASSES", classes,
            "DATASETS.TRAIN", f"('{data}_train',)", "DATASETS.TEST", f"('{data}_val',)"]
    out = tmp_path / "train"
    tool.main(parse(tool, f"{CONFIG}.yaml", *opts, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)))
    res = tool.main(parse(tool, f"{CONFIG}.yaml", *opts, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                          "OUTPUT_DIR", str(tmp_path / "eval"), flags=("--eval-only",)))
    value = res[metric[0]][metric[1]]
    assert math.isnan(value) or 0.0 <= value <= 100.0


def test_yacs_trainer_builds_eomt_optimizer_and_schedule(tiny_synth):
    """The YACS trainer builds EoMT's AdamW (full-model clipping, ViT groups for the second warm-up)."""
    from d2reg.engine import setup_cfg

    cfg = setup_cfg(parse(load_tool("train_net"), f"{CONFIG}.yaml", *TINY, "OUTPUT_DIR", "/tmp/unused"))
    model = D2RegTrainer.build_model(cfg)
    opt = D2RegTrainer.build_optimizer(cfg, model)
    assert "FullModelGradClip" in type(opt).__name__
    assert {g["eomt_vit"] for g in opt.param_groups} == {True, False}
    sched = D2RegTrainer.build_lr_scheduler(cfg, opt)
    assert all(lr == 0.0 for lr in sched.get_last_lr())


def test_demo_draws_panoptic_predictions(tiny_synth, tmp_path):
    from PIL import Image

    from d2reg.demo import demo_cfg, draw_predictions

    cfg = demo_cfg(get_config_file(f"demo/{CONFIG}.yaml"), output_dir=str(tmp_path), opts=TINY)
    model = D2RegTrainer.build_model(cfg)
    path = draw_predictions(cfg, model, cfg.DATASETS.TEST[0], str(tmp_path / "p.png"), num_images=2)
    w, h = Image.open(path).size
    assert (w, h) == (2 * 2 * 64, 2 * 2 * 64)  # 2 images side by side at scale 2, ground truth over predictions


def test_export_tool_eomt_matches_onnxruntime(tiny_synth, tmp_path):
    pytest.importorskip("onnxruntime")
    tool = load_tool("export_onnx")
    rc = tool.main(["--config-file", get_config_file(f"demo/{CONFIG}.yaml"), "--output", str(tmp_path),
                    *TINY, "MODEL.EOMT.NUM_BLOCKS", "2"])
    assert rc == 0 and (tmp_path / "eomt.onnx").is_file()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "eomt.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["mask_logits", "class_logits"]
    masks, classes = sess.run(None, {sess.get_inputs()[0].name: torch.randn(2, 3, 40, 72).numpy()})
    assert masks.shape == (2, 8, 10, 18) and classes.shape == (2, 8, 7)  # 8 queries, 6 classes + no object


def test_eval_only_official_lightning_checkpoint(tiny_synth, tmp_path):
    """The README's one command: ``--eval-only MODEL.WEIGHTS <official Lightning .bin> MODEL.D2REG.WEIGHTS ""``
    loads the file (timm-named ViT under ``network.encoder.backbone.``, the heads under ``network.``) into the
    model the tool builds and prints PQ; a query-count mismatch stops the tool with the fix."""
    import timm

    from d2reg import CheckpointError
    from d2reg.engine import D2RegCheckpointer
    from d2reg.engine.trainer import setup_cfg

    tool = load_tool("train_net")
    args = parse(tool, f"{CONFIG}.yaml", *TINY, "MODEL.D2REG.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "eval"))
    cfg = setup_cfg(args)
    torch.manual_seed(5)
    # the official ViT: timm.create_model(<timm DINOv2-reg name>, img_size=..., patch_size=..., num_classes=0)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=64,
                            patch_size=cfg.MODEL.D2REG.PATCH_SIZE, num_classes=0, embed_dim=64,
                            depth=cfg.MODEL.D2REG.DEPTH, num_heads=2)
    heads = {k: v for k, v in D2RegTrainer.build_model(cfg).state_dict().items()
             if k.startswith(("q.", "class_head.", "mask_head.", "upscale."))}
    sd = {f"network.encoder.backbone.{k}": v for k, v in vit.state_dict().items()}
    sd.update({f"network.{k}": v for k, v in heads.items()})
    sd["network.attn_mask_probs"] = torch.zeros(cfg.MODEL.EOMT.NUM_BLOCKS)
    path = str(tmp_path / "eomt_tiny_640.bin")
    torch.save({"state_dict": sd}, path)

    res = tool.main(parse(tool, f"{CONFIG}.yaml", *TINY, "MODEL.WEIGHTS", path, "MODEL.D2REG.WEIGHTS", "",
                          "OUTPUT_DIR", str(tmp_path / "eval"), flags=("--eval-only",)))
    _check_pq(res)
    model = D2RegTrainer.build_model(cfg)  # what the tool evaluated: its weights are the file's
    D2RegCheckpointer(model).resume_or_load(path, resume=False)
    assert torch.equal(model.q.weight, heads["q.weight"])
    assert torch.equal(model.backbone.vit.blocks[-1].mlp.fc2.weight, vit.blocks[-1].mlp.fc2.weight)
    with pytest.raises(CheckpointError, match="set MODEL.EOMT.NUM_QUERIES"):
        tool.main(parse(tool, f"{CONFIG}.yaml", *TINY, "MODEL.WEIGHTS", path, "MODEL.D2REG.WEIGHTS", "",
                        "MODEL.EOMT.NUM_QUERIES", "6", "OUTPUT_DIR", str(tmp_path / "eval2"), flags=("--eval-only",)))
