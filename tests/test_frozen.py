"""The frozen backbone (``freeze_at="all"``) for both families: no stored backbone activations
(counted with saved-tensor hooks), no gradients, not in the optimizer (YACS and LazyConfig), eval mode
for good, the bf16 path, checkpoints without the frozen weights (``save_frozen=False``) and their errors."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from _tools import load_tool
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from dinov3_reference import random_official_dinov3_state_dict

from d2reg import CheckpointError, DINOv2Backbone, DINOv3Backbone, SimpleFeaturePyramid
from d2reg.benchmark.measure import tensor_peak_bytes
from d2reg.engine import D2RegCheckpointer
from d2reg.engine.checkpointer import OMITTED_KEY
from d2reg.solver import build_optimizer
from d2reg.testing import TINY_ARCH, TINY_IMG, write_checkpoint, write_random_checkpoint

TINY3 = dict(embed_dim=128, depth=2, num_heads=2)  # DINOv3: head dim 64, the RoPE shapes of the real models
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILIES = {"dinov2": (DINOv2Backbone, dict(TINY_ARCH, pretrain_img_size=TINY_IMG)), "dinov3": (DINOv3Backbone, TINY3)}


def _weights(family: str, path: str, seed: int = 0) -> str:
    if family == "dinov2":
        write_random_checkpoint(path, "official", "vit_small", 4, seed=seed, img_size=TINY_IMG, **TINY_ARCH)
        return path
    return write_checkpoint(path, random_official_dinov3_state_dict("vit_small", seed=seed, **TINY3))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(family name, backbone class, its tiny kwargs, a random official-layout weights file)."""
    cls, kw = FAMILIES[request.param]
    path = _weights(request.param, str(tmp_path_factory.mktemp(request.param) / "weights.pth"))
    return request.param, cls, kw, path


def _pyramid(net) -> SimpleFeaturePyramid:
    return SimpleFeaturePyramid(net, "last_feat", 16, (2.0, 1.0, 0.5), LastLevelMaxPool(), "LN")


def _saved_bytes_during(module: torch.nn.Module, run) -> tuple:
    """(count, bytes) of the tensors autograd saves for backward while ``module`` runs its forward
    inside ``run()`` (saved-tensor hooks, active between the module's forward pre-hook and hook)."""
    inside, count, nbytes = [False], [0], [0]

    def pack(t):
        if inside[0]:
            count[0] += 1
            nbytes[0] += t.numel() * t.element_size()
        return t

    pre = module.register_forward_pre_hook(lambda m, a: inside.__setitem__(0, True))
    post = module.register_forward_hook(lambda m, a, o: inside.__setitem__(0, False))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        pre.remove()
        post.remove()
    return count[0], nbytes[0]


@pytest.mark.parametrize("frozen_dtype", ["float32", "bfloat16"])
def test_frozen_step_stores_no_backbone_activations_and_gives_no_gradients(family, frozen_dtype):
    _, cls, kw, path = family
    x = torch.randn(1, 3, 64, 80)
    trained = _pyramid(cls(**kw, weights=path)).train()
    n, b = _saved_bytes_during(trained.net, lambda: sum(v.sum() for v in trained(x).values()))
    assert n > 0 and b > 0  # the count sees a trainable backbone's activations

    model = _pyramid(cls(**kw, weights=path, freeze_at="all", frozen_dtype=frozen_dtype)).train()
    losses = []
    n, b = _saved_bytes_during(model.net, lambda: losses.append(sum(v.float().mean() for v in model(x).values())))
    assert (n, b) == (0, 0)
    losses[0].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.net.parameters())
    head = [p for n, p in model.named_parameters() if not n.startswith("net.")]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)


def test_frozen_backbone_stays_in_eval_mode(family):
    _, cls, kw, path = family
    model = _pyramid(cls(**kw, weights=path, freeze_at="all", drop_path_rate=0.5)).train()
    assert model.training and model.net.training and not any(m.training for m in model.net.vit.modules())
    x = torch.randn(1, 3, 48, 48)
    a, b = model.net(x)["last_feat"], model.net(x)["last_feat"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no stochastic depth
    trainable = cls(**kw, weights=path, drop_path_rate=0.5).train()
    assert trainable.vit.training  # (the same model unfrozen does train its ViT)


def test_bfloat16_frozen_path_outputs_float32_close_to_fp32(family):
    _, cls, kw, path = family
    fp32 = cls(**kw, weights=path, freeze_at="all", out_indices=(0, -1))
    bf16 = cls(**kw, weights=path, freeze_at="all", out_indices=(0, -1), frozen_dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.vit.parameters())
    x = torch.randn(2, 3, 64, 96)
    want, got = fp32(x), bf16(x)
    for name in want:
        assert got[name].dtype == torch.float32
        err = (got[name] - want[name]).abs().max() / want[name].abs().max()
        assert 0 < err <= 0.05  # bf16 (8 mantissa bits) through 2 blocks: not exact, but close


def test_frozen_parameters_are_not_in_the_optimizer_yacs_and_lazyconfig(tiny_maskrcnn_cfg, family):
    name, _, kw, _ = family
    cfg = tiny_maskrcnn_cfg(FREEZE_AT=-1, FAMILY=name, **({"EMBED_DIM": 128} if name == "dinov3" else {}))
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.MODEL.D2REG.LR_DECAY = 0.7
    model = build_model(cfg)
    lazy = LazyConfig.load(str(CONFIGS / f"COCO/mask_rcnn_{'dinov3_' if name == 'dinov3' else ''}vit_s_100ep.py"))
    lazy.model.backbone.net.update(kw, weights=None, freeze_at="all")
    with torch.device("meta"):
        lazy_model = instantiate(lazy.model)
        lazy.optimizer.params.model = lazy_model
        lazy_opt = instantiate(lazy.optimizer)  # the shipped recipe: AdamW, layer decay, d2reg param groups
    for m, opt in ((model, build_optimizer(cfg, model)), (lazy_model, lazy_opt)):
        vit = {id(p) for p in m.backbone.net.vit.parameters()}
        seen = {id(p) for g in opt.param_groups for p in g["params"]}
        assert vit and seen and not seen & vit
        assert seen == {id(p) for p in m.parameters() if p.requires_grad}


def test_yacs_keys_build_the_frozen_bf16_backbone(tiny_maskrcnn_cfg, tmp_path):
    path = _weights("dinov2", str(tmp_path / "w.pth"))
    cfg = tiny_maskrcnn_cfg(FREEZE_AT=-1, FROZEN_DTYPE="bfloat16", SAVE_FROZEN=False, WEIGHTS=path)
    net = build_model(cfg).backbone.net
    assert net.frozen and net.frozen_dtype == torch.bfloat16 and not net.save_frozen and net.weights == path


def _train_step(model, x, lr=0.1):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    sum(v.float().mean() for v in model.train()(x).values()).backward()
    opt.step()
    model.eval()


def test_checkpoint_without_frozen_weights_reloads_exactly(family, tmp_path, caplog):
    _, cls, kw, path = family
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    model = _pyramid(cls(**kw, weights=path, freeze_at="all", save_frozen=False))
    _train_step(model, x)
    D2RegCheckpointer(model, str(tmp_path)).save("model_final")
    file = str(tmp_path / "model_final.pth")
    saved = torch.load(file, weights_only=True)
    assert saved["model"] and not any(k.startswith("net.vit.") for k in saved["model"])
    assert len(saved[OMITTED_KEY]["net"]["keys"]) == len(model.net.vit.state_dict())
    full = str(tmp_path / "full")
    os.makedirs(full)
    D2RegCheckpointer(model, full, save_frozen=True).save("model_final")  # the checkpointer's override
    assert os.path.getsize(file) < os.path.getsize(os.path.join(full, "model_final.pth")) / 2

    torch.manual_seed(1)  # another pyramid initialisation, the same weights file
    fresh = _pyramid(cls(**kw, weights=path, freeze_at="all")).eval()
    with torch.no_grad():
        before, want = fresh(x), model(x)
    assert any(not torch.equal(before[k], want[k]) for k in want)
    with caplog.at_level(logging.WARNING):
        D2RegCheckpointer(fresh).load(file)
    assert "not found in the checkpoint" not in caplog.text and "net.vit" not in caplog.text
    with torch.no_grad():
        got = fresh(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_checkpoint_without_frozen_weights_errors(family, tmp_path):
    name, cls, kw, path = family
    model = _pyramid(cls(**kw, weights=path, freeze_at="all", save_frozen=False))
    D2RegCheckpointer(model, str(tmp_path)).save("m")
    file = str(tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"built without a weights file to take them from: build it with "
                                              r"weights='.*weights\.pth'"):
        D2RegCheckpointer(_pyramid(cls(**kw, freeze_at="all"))).load(file)
    other = _weights(name, str(tmp_path / "other.pth"), seed=5)
    with pytest.raises(CheckpointError, match=r"does not hold them: its values differ in net\.vit\.cls_token"):
        D2RegCheckpointer(_pyramid(cls(**kw, weights=other, freeze_at="all"))).load(file)
    with pytest.raises(CheckpointError, match=r"no weights file to reload its frozen tensors from"):
        D2RegCheckpointer(_pyramid(cls(**kw, freeze_at="all")), str(tmp_path), save_frozen=False).save("n")


@pytest.mark.parametrize("cls,kw", list(FAMILIES.values()), ids=list(FAMILIES))
def test_frozen_option_errors(cls, kw):
    with pytest.raises(ValueError, match=r"frozen_dtype='bfloat16' applies to a frozen backbone only, but "
                                         r"freeze_at=1: set freeze_at='all'"):
        cls(**kw, freeze_at=1, frozen_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"frozen_dtype must be one of \['float32', 'bfloat16'\], got 'fp16'"):
        cls(**kw, freeze_at="all", frozen_dtype="fp16")
    with pytest.raises(ValueError, match=r"save_frozen=False .* weights is not set: pass weights=<file>"):
        cls(**kw, freeze_at="all", save_frozen=False)


def test_tensor_peak_counts_a_transient_tensor():
    def fn():
        x = torch.ones(2 ** 20)  # 4 MiB, freed before the end
        (x * 2).sum()
    assert 8 * 2 ** 20 <= tensor_peak_bytes(fn) < 9 * 2 ** 20  # x and x * 2 live together


def test_memory_benchmark_ranks_the_recipes(tmp_path):
    tool = load_tool("benchmark")
    out = tmp_path / "mem.json"
    recipes = ["d2reg+sfp", "d2reg+sfp-frozen-bf16", "d2reg+sfp-lora"]
    arch = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_ARCH.items()]
    assert tool.main([*arch, "--pretrain-img-size", str(TINY_IMG), "--sizes", "64", "--memory-only",
                      "--step-cases", *recipes, "--json", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == set(recipes)
    full, frozen, lora = (rows[n] for n in recipes)
    assert 0 < frozen["trainable"] < lora["trainable"] < full["trainable"] == full["params"]  # frozen: pyramid only
    assert frozen["step_saved_mib"] < lora["step_saved_mib"] <= full["step_saved_mib"]
    assert frozen["step_tensor_peak_mib"] < full["step_tensor_peak_mib"]
    assert frozen["weights_mib"] < full["weights_mib"]  # the ViT in bf16
