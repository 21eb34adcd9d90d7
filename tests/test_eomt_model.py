"""d2reg.EoMT's network against an independent float64 reference of the official EoMT forward
(tests/eomt_reference.py): masked attention on (keep probability 1 and below 1, same random draws)
and off, on DINOv2-reg (timm ViT) and DINOv3 (timm Eva with RoPE, official file); plus the model's
contract errors."""
from __future__ import annotations

import math

import pytest
import torch
from dinov3_reference import random_official_dinov3_state_dict
from eomt_reference import dinov2_timm_vit, dinov3_official_vit, eomt_reference_forward

from d2reg import DINOv2Backbone, DINOv3Backbone, EoMT
from d2reg.testing import write_checkpoint

NUM_Q, NUM_C, DEPTH, NUM_BLOCKS = 10, 5, 4, 3
V2 = dict(embed_dim=64, depth=DEPTH, num_heads=2, pretrain_img_size=112)  # 8 x 8 position grid
V3 = dict(embed_dim=128, depth=DEPTH, num_heads=2)  # head dim 64, the RoPE shapes of the real models
HEADS = ("q.", "class_head.", "mask_head.", "upscale.")


def _randomise(module: torch.nn.Module, seed: int, prefixes=("",)) -> None:
    """Every parameter visibly nonzero: norms near 1, LayerScale near 0.5, the rest ~ 1/sqrt(fan-in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith(prefixes):
                continue
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * r)
            elif name.endswith(("cls_token", "reg_token", "pos_embed", "q.weight")):
                p.copy_(0.5 * r)
            elif p.dim() > 1:
                p.copy_(r / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * r)


@pytest.fixture(scope="module")
def dinov3_file(tmp_path_factory):
    sd = random_official_dinov3_state_dict("vit_small", seed=4, **V3)
    return write_checkpoint(str(tmp_path_factory.mktemp("v3") / "dinov3_vits16_tiny.pth"), sd), sd


def _model(family: str, dinov3_file=None, **kw) -> EoMT:
    if family == "dinov2":
        backbone = DINOv2Backbone(arch="vit_small", final_norm=True, **V2)
    else:
        backbone = DINOv3Backbone(arch="vit_small", weights=dinov3_file[0], final_norm=True, **V3)
    model = EoMT(backbone=backbone, num_classes=NUM_C, num_queries=NUM_Q, num_blocks=NUM_BLOCKS, **kw)
    _randomise(model, 1, HEADS if family == "dinov3" else ("",))
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
@pytest.mark.parametrize("probs", [None, (1.0, 1.0, 1.0), (0.5, 1.0, 0.3)], ids=["off", "on", "annealing"])
def test_forward_logits_equal_the_official_forward(family, probs, dinov3_file):
    model = _model(family, dinov3_file, masked_attn_enabled=probs is not None)
    if probs is not None:
        model.attn_mask_probs.copy_(torch.tensor(probs))
    size = (128, 128) if family == "dinov2" else (96, 128)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    sd = model.state_dict()
    heads = {k: v for k, v in sd.items() if k.startswith(HEADS)}
    if family == "dinov2":
        vit = dinov2_timm_vit({k: v.double() for k, v in model.backbone.vit.state_dict().items()}, num_heads=2)
    else:
        vit = dinov3_official_vit({k: v.double() for k, v in dinov3_file[1].items()}, num_heads=2)
    torch.manual_seed(7)
    with torch.no_grad():
        masks, classes = model.forward_logits(images)
    torch.manual_seed(7)
    ref_masks, ref_classes = eomt_reference_forward(
        vit, heads, images, DEPTH, NUM_BLOCKS, model.attn_mask_probs.tolist(), masked_attn=probs is not None)
    n_pred = 1 if probs is None else NUM_BLOCKS + 1
    assert len(masks) == len(classes) == len(ref_masks) == n_pred
    for k in range(n_pred):
        assert masks[k].shape == (2, NUM_Q, size[0] // 4, size[1] // 4)
        assert classes[k].shape == (2, NUM_Q, NUM_C + 1)
        assert _rel(masks[k], ref_masks[k]) <= 1e-4, (k, _rel(masks[k], ref_masks[k]))
        assert _rel(classes[k], ref_classes[k]) <= 1e-4, (k, _rel(classes[k], ref_classes[k]))
    if probs is not None:  # the masks do restrict something: the unmasked forward differs
        model.masked_attn_enabled = False
        with torch.no_grad():
            plain = model.forward_logits(images)[0][-1]
        assert _rel(plain, masks[-1]) > 1e-3


def test_masks_restrict_only_query_to_patch_attention():
    model = _model("dinov2")
    logits = torch.randn(1, NUM_Q, 32, 32)
    mask = model._attn_mask(logits, 0, NUM_Q + 5 + 64, (8, 8))[0, 0]
    start = NUM_Q + 5
    assert mask[start:].all() and mask[:, :start].all()  # patches and prefix/queries: unrestricted
    assert not mask[:NUM_Q, start:].all() and mask[:NUM_Q, start:].any()


def test_contract_errors():
    with pytest.raises(ValueError, match="final_norm=True"):
        EoMT(backbone=DINOv2Backbone(arch="vit_small", **V2), num_classes=3, num_queries=4, num_blocks=2)
    with pytest.raises(ValueError, match="window_size=0"):
        EoMT(backbone=DINOv2Backbone(arch="vit_small", final_norm=True, window_size=4, window_block_indexes=(0,), **V2),
             num_classes=3, num_queries=4, num_blocks=2)
    with pytest.raises(ValueError, match="num_blocks must be"):
        EoMT(backbone=DINOv2Backbone(arch="vit_small", final_norm=True, **V2), num_classes=3, num_queries=4,
             num_blocks=9)
    with pytest.raises(ValueError, match="task must be"):
        EoMT(backbone=DINOv2Backbone(arch="vit_small", final_norm=True, **V2), num_classes=3, num_queries=4,
             num_blocks=2, task="depth")
    model = _model("dinov2")
    with pytest.raises(ValueError, match="multiples of 16"):
        model.forward_logits(torch.zeros(1, 3, 100, 128))
