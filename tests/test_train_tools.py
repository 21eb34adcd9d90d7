"""tools/train_net.py, tools/lazyconfig_train_net.py, tools/convert_checkpoint.py and tools/demo.py for real:
train -> checkpoint -> resume -> evaluate with detectron2's trainer, checkpointer and evaluators on
the synthetic data set (tiny model, a few iterations, CPU), and the checkpointer trap."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from _tools import DEMO, LAZY_TINY, TINY_DATA, TINY_INSTANCE, TINY_SEM_SEG, load_tool, parse

from d2reg import CheckpointError, DINOv2Backbone


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    """The synthetic data sets re-registered as 8 train / 4 val images of 64 px in a tmp cache."""
    import d2reg.data as data

    root = str(tmp_path_factory.mktemp("synth"))
    yield data.register_synthetic_datasets(root, **TINY_DATA)
    data.register_synthetic_datasets()  # back to the defaults for other tests


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _assert_same_results(a, b):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys()
        for k, v in a[task].items():
            assert v == b[task][k] or (math.isnan(v) and math.isnan(b[task][k])), (task, k, v, b[task][k])


def _resume_cycle(tool, config, opts, out, results_key):
    """Uninterrupted 4 iterations (checkpoints after 2 and 4) vs. a fresh process state resumed
    from the 2-iteration checkpoint; then --eval-only on the final weights."""
    full, resumed = out / "full", out / "resumed"
    res_full = tool.main(parse(tool, config, *opts, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                               "OUTPUT_DIR", str(full)))
    assert os.path.isfile(full / "model_0000001.pth") and os.path.isfile(full / "model_final.pth")
    os.makedirs(resumed)
    shutil.copy(full / "model_0000001.pth", resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    res_resumed = tool.main(parse(tool, config, *opts, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                                  "OUTPUT_DIR", str(resumed), flags=("--resume",)))
    log = (resumed / "log.txt").read_text()
    assert "Starting training from iteration 2" in log
    assert not os.path.exists(resumed / "model_0000000.pth")  # iterations 0-1 were not re-run
    _assert_same_weights(_weights(full / "model_final.pth"), _weights(resumed / "model_final.pth"))
    res_eval = tool.main(parse(tool, config, *opts, "MODEL.WEIGHTS", str(full / "model_final.pth"),
                               "OUTPUT_DIR", str(out / "eval"), flags=("--eval-only",)))
    for res in (res_full, res_resumed, res_eval):
        for key in results_key:
            assert key in res and all(math.isfinite(v) or math.isnan(v) for v in res[key].values())
    _assert_same_results(res_eval, res_full)  # same weights, same evaluator: same numbers
    return res_full


def test_train_resume_eval_instance(tiny_synth, tmp_path):
    tool = load_tool("train_net")
    res = _resume_cycle(tool, "mask_rcnn_vit_tiny_synth.yaml", TINY_INSTANCE, tmp_path, ("bbox", "segm"))
    assert 0.0 <= res["bbox"]["AP"] <= 100.0


def test_train_resume_eval_sem_seg(tiny_synth, tmp_path):
    tool = load_tool("train_net")
    res = _resume_cycle(tool, "sem_fpn_vit_tiny_synth.yaml", TINY_SEM_SEG, tmp_path, ("sem_seg",))
    assert 0.0 <= res["sem_seg"]["mIoU"] <= 100.0




def test_lazy_train_resume_eval_instance(tiny_synth, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    cfg = "mask_rcnn_vit_tiny_synth.py"
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    res_full = tool.main(parse(tool, cfg, *LAZY_TINY, f"train.output_dir={full}"))
    os.makedirs(resumed)
    shutil.copy(full / "model_0000001.pth", resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    tool.main(parse(tool, cfg, *LAZY_TINY, f"train.output_dir={resumed}", flags=("--resume",)))
    _assert_same_weights(_weights(full / "model_final.pth"), _weights(resumed / "model_final.pth"))
    res_eval = tool.main(parse(tool, cfg, *LAZY_TINY, f"train.output_dir={tmp_path / 'eval'}",
                               f"train.init_checkpoint={full / 'model_final.pth'}", flags=("--eval-only",)))
    assert "bbox" in res_eval and "segm" in res_eval
    _assert_same_results(res_eval, res_full)


# ------------------------------------------------------------------------------ the checkpointer trap
def _tiny_model(*opts):
    from detectron2.engine import default_argument_parser

    from d2reg.engine import D2RegTrainer, setup_cfg

    config = os.path.join(DEMO, "mask_rcnn_vit_tiny_synth.yaml")
    args = default_argument_parser().parse_args(["--config-file", config, *TINY_INSTANCE, *opts])
    cfg = setup_cfg(args)
    return cfg, D2RegTrainer.build_model(cfg)


@pytest.mark.parametrize(
    "layout,name", [("official", "vit.pth"), ("timm", "vit.safetensors"), ("hf", "model.safetensors")]
)
def test_dinov2_file_as_model_weights_loads_backbone(write_ckpt, tmp_path, layout, name):
    """detectron2's own checkpointer would match no key here and train from random init."""
    from d2reg.engine import D2RegCheckpointer

    path, _ = write_ckpt(name, layout, embed_dim=64, depth=3, num_heads=2)
    cfg, model = _tiny_model("OUTPUT_DIR", str(tmp_path / "out"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    D2RegCheckpointer(model).load(path)
    expected = DINOv2Backbone(arch="vit_small", embed_dim=64, depth=2, num_heads=2, weights=path,
                              patch_size=cfg.MODEL.D2REG.PATCH_SIZE).vit.state_dict()
    got = model.backbone.net.vit.state_dict()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    heads = [k for k in before if not k.startswith("backbone.net.vit.")]
    assert heads and all(torch.equal(before[k], model.state_dict()[k]) for k in heads)  # heads untouched


def test_dinov2_file_through_train_net(write_ckpt, tiny_synth, tmp_path):
    """MODEL.WEIGHTS = an official DINOv2 file in the real tool: trains from those weights."""
    path, _ = write_ckpt("dinov2_official.pth", "official", embed_dim=64, depth=2, num_heads=2)
    from d2reg.engine import D2RegTrainer

    cfg, _ = _tiny_model("MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "o"), "SOLVER.MAX_ITER", "1")
    trainer = D2RegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    expected = DINOv2Backbone(arch="vit_small", embed_dim=64, depth=2, num_heads=2, weights=path,
                              patch_size=cfg.MODEL.D2REG.PATCH_SIZE).vit.state_dict()
    got = trainer.model.backbone.net.vit.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_unrelated_weights_file_is_an_error(tmp_path):
    import torchvision

    from d2reg.engine import D2RegCheckpointer

    _, model = _tiny_model("OUTPUT_DIR", str(tmp_path / "out"))
    path = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="matches none"):
        D2RegCheckpointer(model).load(path)
    path2 = str(tmp_path / "d2_other.pth")
    torch.save({"model": {"roi_heads.foo.weight": torch.zeros(3)}}, path2)
    with pytest.raises(CheckpointError, match="matches none"):
        D2RegCheckpointer(model).load(path2)


def test_wrong_size_dinov2_file_is_an_error(write_ckpt, tmp_path):
    from d2reg.engine import D2RegCheckpointer

    path, _ = write_ckpt("vit32.pth", "official", embed_dim=32, depth=2, num_heads=2)
    _, model = _tiny_model("OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="embed_dim"):
        D2RegCheckpointer(model).load(path)


def test_convert_checkpoint_for_stock_detectron2(write_ckpt, tmp_path):
    """tools/convert_checkpoint.py output loads with detectron2's own DetectionCheckpointer."""
    from detectron2.checkpoint import DetectionCheckpointer

    src, _ = write_ckpt("hf.safetensors", "hf", embed_dim=64, depth=2, num_heads=2)
    out = str(tmp_path / "d2.pth")
    cfg, model = _tiny_model("OUTPUT_DIR", str(tmp_path / "out"))
    patch = cfg.MODEL.D2REG.PATCH_SIZE
    load_tool("convert_checkpoint").main([src, out, "--patch-size", str(patch)])
    DetectionCheckpointer(model).load(out)
    expected = DINOv2Backbone(arch="vit_small", embed_dim=64, depth=2, num_heads=2, weights=src,
                              patch_size=patch).vit.state_dict()
    got = model.backbone.net.vit.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---------------------------------------------------------------------------------- tools/demo.py
def _dinov2_file(write_ckpt, tmp_path):
    return write_ckpt("dinov2_official.pth", "official", embed_dim=64, depth=3, num_heads=2)[0]


def _dinov3_file(write_ckpt, tmp_path):
    from dinov3_reference import random_official_dinov3_state_dict

    from d2reg.testing import write_checkpoint

    sd = random_official_dinov3_state_dict("vit_small", seed=0, embed_dim=64, depth=3, num_heads=2)
    return write_checkpoint(str(tmp_path / "dinov3_official.pth"), sd)


@pytest.mark.parametrize("family, make_file, patch", [("dinov2", _dinov2_file, 8), ("dinov3", _dinov3_file, 16)])
def test_demo_tool_instance_with_weights(write_ckpt, tiny_synth, tmp_path, capsys, family, make_file, patch):
    """`make demo WEIGHTS=...`: a DINOv2 file (patch 14) lands in the patch-8 demo backbone, a DINOv3 file
    picks the DINOv3 demo (patch 16); the model trains, COCOEvaluator reports box and mask AP and
    predictions.png is written."""
    path = make_file(write_ckpt, tmp_path)
    tool = load_tool("demo")
    results = tool.main(["--weights", path, "--output-dir", str(tmp_path / "demo"), *TINY_INSTANCE,
                         "SOLVER.MAX_ITER", "2"])
    out = capsys.readouterr().out
    res = results.get("d2reg_synth_val", results)  # detectron2 flattens a single test set
    assert f"box AP {res['bbox']['AP']:.1f}" in out and f"mask AP {res['segm']['AP']:.1f}" in out
    assert f"model: {family} ViT" in out and f"patch {patch}" in out and "weights " + path in out
    assert os.path.getsize(tmp_path / "demo" / "predictions.png") > 1000
    with open(tmp_path / "demo" / "config.yaml") as f:
        assert path in f.read()  # MODEL.WEIGHTS, i.e. through D2RegCheckpointer


def test_demo_tool_sem_seg(tiny_synth, tmp_path, capsys):
    tool = load_tool("demo")
    results = tool.main(["--task", "sem_seg", "--output-dir", str(tmp_path / "demo"), *TINY_SEM_SEG,
                         "SOLVER.MAX_ITER", "2"])
    out = capsys.readouterr().out
    res = results.get("d2reg_synth_sem_seg_val", results)
    assert f"mIoU {res['sem_seg']['mIoU']:.1f}" in out and "RANDOM INIT" in out
    assert os.path.getsize(tmp_path / "demo" / "predictions.png") > 1000


def test_demo_tool_time_budget(tiny_synth, tmp_path, capsys):
    """A budget already spent when training starts: the plan after the warm-up measurement keeps
    only the iterations done, training stops there (model_final written), the model is evaluated and
    the printout says the budget cut the run short."""
    tool = load_tool("demo")
    out_dir = tmp_path / "demo"
    results = tool.main(["--output-dir", str(out_dir), "--time-budget", "0.001", *TINY_INSTANCE,
                         "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "(30,)"])
    out = capsys.readouterr().out
    assert "plan after 10 iterations" in out and "-> 10 iterations (budget: fewer than the tuned 40)" in out
    assert "10 of 40 iterations" in out and "NOTE: the time budget allowed 10 of the tuned 40" in out
    assert "so AP is lower than the recipe's" in out
    assert "CPU: " in out
    res = results.get("d2reg_synth_val", results)
    assert "bbox" in res and "segm" in res
    assert os.path.isfile(out_dir / "model_final.pth") and os.path.isfile(out_dir / "predictions.png")
    with open(out_dir / "metrics.json") as f:
        iters = [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]
    assert max(iters) == 9  # no training step after the plan's last iteration


def test_demo_trainer_set_max_iter(tiny_synth, tmp_path):
    """DemoTrainer.set_max_iter mid-run: detectron2's loop stops at the new length, the LR milestone
    and the end of the schedule move with it (warm-up stays in iterations), model_final is written."""
    from detectron2.engine import HookBase

    from d2reg.demo import DemoTrainer, demo_cfg, scale_steps

    class Resize(HookBase):
        def __init__(self):
            self.lrs = []

        def before_step(self):
            self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])

        def after_step(self):
            if self.trainer.iter == 2:
                self.trainer.set_max_iter(8)

    cfg = demo_cfg(os.path.join(DEMO, "mask_rcnn_vit_tiny_synth.yaml"), output_dir=str(tmp_path), opts=[
        *TINY_INSTANCE, "SOLVER.MAX_ITER", "16", "SOLVER.STEPS", "(12,)", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.BASE_LR", "0.001", "DATASETS.TEST", "()"])
    trainer = DemoTrainer(cfg)
    probe = Resize()
    trainer.register_hooks([probe])  # after hooks.LRScheduler, as set_max_iter requires
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert scale_steps([12], 16, 8) == [6] == trainer.lr_steps
    assert trainer.iter == trainer.max_iter == 8 and len(probe.lrs) == 8
    base = 0.001
    assert probe.lrs[0] < base and probe.lrs[2] == pytest.approx(base)  # warm-up: 2 iterations
    assert probe.lrs[5] == pytest.approx(base) and probe.lrs[6] == pytest.approx(0.1 * base)  # milestone 6
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_demo_plan_arithmetic():
    from d2reg.demo import plan_iterations, scale_steps

    assert plan_iterations(10, 0.5, 100.0, 800) == 210  # 200 more steps fit
    assert plan_iterations(10, 0.5, 1000.0, 800) == 800  # never beyond the tuned recipe
    assert plan_iterations(10, 0.5, -5.0, 800) == 10  # budget spent: stop now
    assert scale_steps([700], 800, 400) == [350] and scale_steps([620], 700, 7) == [6]
