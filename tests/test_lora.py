"""LoRA (peft) on both families: a training step changes only the LoRA matrices and the heads, the
merge folds it into plain ``nn.Linear`` layers with the same outputs, and the merged model saves and
loads through the d2reg checkpointer like any d2reg model; pre-trained files load under LoRA; errors."""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from dinov3_reference import random_official_dinov3_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from d2reg import DINOv2Backbone, DINOv3Backbone, SimpleFeaturePyramid
from d2reg.engine import D2RegCheckpointer
from d2reg.modeling.lora import lora_parameter_names
from d2reg.solver import build_optimizer, get_d2reg_optimizer_params
from d2reg.testing import TINY_ARCH, TINY_IMG, write_checkpoint, write_random_checkpoint

TINY3 = dict(embed_dim=128, depth=2, num_heads=2)  # DINOv3: head dim 64, the RoPE shapes of the real models
FAMILIES = {"dinov2": (DINOv2Backbone, dict(TINY_ARCH, pretrain_img_size=TINY_IMG)), "dinov3": (DINOv3Backbone, TINY3)}
ALL_TARGETS = dict(rank=4, alpha=8.0, targets=("qkv", "proj", "fc1", "fc2"))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(backbone class, its tiny kwargs, a random official-layout weights file)."""
    cls, kw = FAMILIES[request.param]
    path = str(tmp_path_factory.mktemp(request.param) / "weights.pth")
    if request.param == "dinov2":
        write_random_checkpoint(path, "official", "vit_small", 4, seed=0, img_size=TINY_IMG, **TINY_ARCH)
    else:
        write_checkpoint(path, random_official_dinov3_state_dict("vit_small", seed=0, **TINY3))
    return cls, kw, path


def _pyramid(net) -> SimpleFeaturePyramid:
    return SimpleFeaturePyramid(net, "last_feat", 16, (2.0, 1.0, 0.5), LastLevelMaxPool(), "LN")


def _step(model, x, steps=2, lr=0.5):
    opt = torch.optim.SGD(get_d2reg_optimizer_params(model, base_lr=lr, weight_decay=0.0), lr=lr)
    model.train()
    for _ in range(steps):  # two steps: LoRA's B starts at zero, so A moves from the second one
        opt.zero_grad()
        sum(v.pow(2).mean() for v in model(x).values()).backward()
        opt.step()
    return model.eval()


def test_lora_step_changes_only_lora_and_heads(family):
    cls, kw, path = family
    model = _pyramid(cls(**kw, weights=path, lora=dict(ALL_TARGETS, blocks=(-1,))))
    lora = set(lora_parameter_names(model))
    assert lora and all(".blocks.1." in n for n in lora)  # blocks=(-1,): the last block only
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora | {
        n for n, _ in model.named_parameters() if not n.startswith("net.")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, torch.randn(1, 3, 64, 64))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == lora | {k for k in changed if not k.startswith("net.")}  # nothing else in the ViT
    assert lora <= changed  # A and B both moved
    assert any(not k.startswith("net.") for k in changed)


def test_merged_model_equals_unmerged_and_round_trips_the_checkpointer(family, tmp_path):
    cls, kw, path = family
    torch.manual_seed(0)
    model = _step(_pyramid(cls(**kw, weights=path, lora=ALL_TARGETS)), torch.randn(1, 3, 64, 64))
    x = torch.randn(2, 3, 80, 48)
    with torch.no_grad():
        want = model(x)
        plain = cls(**kw, weights=path).eval()(x)["last_feat"]
        assert (model.net(x)["last_feat"] - plain).abs().max() > 1e-3  # the trained LoRA does change the ViT
    assert model.net.merge_lora() == 4 * len(model.net.vit.blocks)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()) and not lora_parameter_names(model)
    assert all(type(b.attn.qkv) is torch.nn.Linear and type(b.mlp.fc2) is torch.nn.Linear for b in model.net.vit.blocks)
    with torch.no_grad():
        merged = model(x)
    for k in want:
        torch.testing.assert_close(merged[k], want[k], rtol=0, atol=1e-5)

    fresh_net = cls(**kw)  # a plain backbone, no LoRA, no weights: the checkpoint holds everything
    assert set(model.state_dict()) == set(_pyramid(fresh_net).state_dict())
    D2RegCheckpointer(model, str(tmp_path)).save("merged")
    fresh = _pyramid(cls(**kw)).eval()
    D2RegCheckpointer(fresh).load(str(tmp_path / "merged.pth"))
    with torch.no_grad():
        got = fresh(x)
    for k in want:
        torch.testing.assert_close(got[k], merged[k], rtol=0, atol=0)


def test_lora_on_pretrained_weights_starts_at_the_pretrained_model(family, tmp_path):
    cls, kw, path = family
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        want = cls(**kw, weights=path).eval()(x)["last_feat"]
        got = cls(**kw, weights=path, lora=ALL_TARGETS).eval()(x)["last_feat"]  # B = 0: LoRA adds nothing yet
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        # the same file as MODEL.WEIGHTS through the checkpointer into a LoRA model: the base layers get it
        late = _pyramid(cls(**kw, lora=ALL_TARGETS)).eval()
        D2RegCheckpointer(late).load(path)
        torch.testing.assert_close(late.net(x)["last_feat"], want, rtol=0, atol=1e-6)
        later = cls(**kw, lora=ALL_TARGETS).eval()
        later.load_weights(path)  # the backbone's own loader, after LoRA
        torch.testing.assert_close(later(x)["last_feat"], want, rtol=0, atol=1e-6)


def test_lora_checkpoint_without_frozen_base_weights(family, tmp_path):
    cls, kw, path = family
    model = _step(_pyramid(cls(**kw, weights=path, lora=ALL_TARGETS, save_frozen=False)), torch.randn(1, 3, 64, 64))
    D2RegCheckpointer(model, str(tmp_path)).save("lora")
    saved = torch.load(str(tmp_path / "lora.pth"), weights_only=True)["model"]
    assert {k for k in saved if k.startswith("net.")} == set(lora_parameter_names(model))
    fresh = _pyramid(cls(**kw, weights=path, lora=ALL_TARGETS)).eval()
    D2RegCheckpointer(fresh).load(str(tmp_path / "lora.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for k, v in model(x).items():
            torch.testing.assert_close(fresh(x)[k], v, rtol=0, atol=0)


def test_lora_from_yacs_and_its_optimizer(tiny_maskrcnn_cfg):
    cfg = tiny_maskrcnn_cfg()
    cfg.MODEL.D2REG.LORA.RANK = 2
    cfg.MODEL.D2REG.LORA.BLOCKS = [1]
    cfg.MODEL.D2REG.LORA.TARGETS = ["qkv", "fc2"]
    model = build_model(cfg)
    names = lora_parameter_names(model)
    assert sorted({n.split(".lora_")[0] for n in names}) == [
        "backbone.net.vit.blocks.1.attn.qkv", "backbone.net.vit.blocks.1.mlp.fc2"]
    assert model.backbone.net.vit.blocks[1].attn.qkv.r["default"] == 2
    seen = {id(p) for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
    vit = dict(model.backbone.net.vit.named_parameters())
    assert {n for n, p in vit.items() if id(p) in seen} == {n[len("backbone.net.vit."):] for n in names}


@pytest.mark.parametrize("cls,kw", list(FAMILIES.values()), ids=list(FAMILIES))
def test_lora_errors(cls, kw):
    with pytest.raises(ValueError, match=r"lora freezes every ViT weight except the LoRA matrices itself; "
                                         r"freeze_at='all'"):
        cls(**kw, freeze_at="all", lora=dict(rank=4))
    with pytest.raises(ValueError, match=r"lora targets must be a non-empty subset of \['qkv', 'proj', 'fc1', "
                                         r"'fc2'\], got \['qkv', 'mlp'\]"):
        cls(**kw, lora=dict(rank=4, targets=("qkv", "mlp")))
    with pytest.raises(ValueError, match=r"lora takes .*unknown keys \['r'\]"):
        cls(**kw, lora=dict(r=4))
    with pytest.raises(ValueError, match=r"lora blocks entry 5 is out of range for a 2-block ViT"):
        cls(**kw, lora=dict(rank=4, blocks=(5,)))


def test_lora_on_windowed_dinov3_qkv_is_refused_other_targets_work():
    kw = dict(TINY3, window_size=2, window_block_indexes=(0,))
    with pytest.raises(ValueError, match=r"LoRA on attn.qkv of the windowed DINOv3 blocks \[0\] is not supported"):
        DINOv3Backbone(**kw, lora=dict(rank=2))
    net = DINOv3Backbone(**kw, lora=dict(rank=2, targets=("proj", "fc1")))
    sum(v.sum() for v in net(torch.randn(1, 3, 64, 64)).values()).backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if ".lora_" in n)
