"""DINOv2Backbone itself: position-embedding interpolation, outputs (indices, final norm, padding),
the detectron2 contract, gradients of every trainable parameter, and the freeze_at knob."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_reference import interpolate_pos_encoding
from timm.layers import resample_abs_pos_embed

from d2reg import DINOv2Backbone
from d2reg.testing import TINY_ARCH, TINY_IMG
from d2reg.vit import interpolate_pos_embed


def _kw(**kw):
    return dict(TINY_ARCH, pretrain_img_size=TINY_IMG, **kw)  # the tiny_kwargs fixture's model


# ---------------------------------------------------------------- position-embedding interpolation
def _pos(M=16, C=8, seed=0):
    return torch.randn(1, 1 + M * M, C, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grid", [(13, 19), (19, 13), (16, 23), (32, 46), (7, 7)])
def test_interpolate_pos_embed_legacy_equals_official_formula(grid):
    full = _pos()
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], 8)  # only its shape and dtype are read
    # official naming: w is the image height, h its width (B, nc, w, h = x.shape)
    official = interpolate_pos_encoding({"pos_embed": full}, tokens, grid[0] * 14, grid[1] * 14, 14,
                                        interpolate_offset=0.1, interpolate_antialias=False)
    ours = interpolate_pos_embed(full[:, 1:], grid, legacy_offset=True)
    assert ours.shape == (1, grid[0] * grid[1], 8)
    torch.testing.assert_close(ours, official[:, 1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid", [(13, 19), (19, 13), (16, 23), (32, 46)])
def test_interpolate_pos_embed_antialias_equals_timm_and_official(grid):
    full = _pos()
    ours = interpolate_pos_embed(full[:, 1:], grid, legacy_offset=False)
    timm_ref = resample_abs_pos_embed(full[:, 1:], new_size=grid, old_size=(16, 16), num_prefix_tokens=0)
    torch.testing.assert_close(ours, timm_ref, rtol=0, atol=1e-6)
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], 8)
    official = interpolate_pos_encoding({"pos_embed": full}, tokens, grid[0] * 14, grid[1] * 14, 14,
                                        interpolate_offset=0.0, interpolate_antialias=True)
    torch.testing.assert_close(ours, official[:, 1:], rtol=0, atol=1e-6)
    # the two official variants really differ off the native grid
    legacy = interpolate_pos_embed(full[:, 1:], grid, legacy_offset=True)
    assert (legacy - ours).abs().max() > 1e-2


def test_interpolate_pos_embed_native_and_errors():
    full = _pos()
    assert interpolate_pos_embed(full[:, 1:], (16, 16), legacy_offset=True) is not None
    torch.testing.assert_close(interpolate_pos_embed(full[:, 1:], (16, 16), legacy_offset=True), full[:, 1:])
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_pos_embed(full, (8, 8), legacy_offset=False)  # 257 rows: CLS row left in


# --------------------------------------------------------------------------------------- outputs
def test_out_indices_and_pruning():
    model = DINOv2Backbone(out_indices=(0, -1), **_kw(depth=3)).eval()
    assert model._out_features == ["block0", "last_feat"]
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {"block0": (32, 16), "last_feat": (32, 16)}
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 80))
    assert list(out) == ["block0", "last_feat"]
    assert all(v.shape == (2, 32, 4, 5) for v in out.values())
    assert not torch.equal(out["block0"], out["last_feat"])

    early = DINOv2Backbone(out_indices=(0,), **_kw(depth=3))
    assert len(early.vit.blocks) == 1  # blocks after the last used one are removed
    assert early.num_layers == 1


def test_early_out_index_loads_full_checkpoint(write_ckpt):
    """A 2-block checkpoint into a model that stops after block 0: the unused block is dropped
    (reported as unused, not an error) and block 0's tokens match the official forward of block 0."""
    from official_reference import official_patch_tokens

    path, sd = write_ckpt("official.pth")
    model = DINOv2Backbone(patch_size=14, weights=path, out_indices=(0,), **_kw()).eval()
    assert len(model.vit.blocks) == 1
    first_block = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    img = torch.randn(1, 3, 182, 266)
    with torch.no_grad():
        torch.testing.assert_close(model(img)["last_feat"], official_patch_tokens(first_block, img, 2),
                                   rtol=0, atol=1e-4)


def test_final_norm_off_by_default_and_pruned():
    names = [n for n, _ in DINOv2Backbone(**_kw()).named_parameters()]
    assert not any(n.startswith("vit.norm.") for n in names)
    assert not any("mask_token" in n or n.startswith("vit.head") for n in names)
    normed = [n for n, _ in DINOv2Backbone(final_norm=True, **_kw()).named_parameters()]
    assert "vit.norm.weight" in normed


def test_layer_scale_init_only_sets_the_random_init(write_ckpt):
    """DINOv2's 1e-5 by default; ``layer_scale_init`` changes a fresh model's gammas, and loaded
    weights replace them whatever it is (a config written for the demo cannot skew a checkpoint)."""
    def gammas(model):
        return torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(".gamma")])

    assert torch.all(gammas(DINOv2Backbone(**_kw())) == 1e-5)
    assert torch.all(gammas(DINOv2Backbone(layer_scale_init=0.5, **_kw())) == 0.5)
    path, sd = write_ckpt("official.pth")
    loaded = DINOv2Backbone(weights=path, layer_scale_init=0.5, **_kw())
    torch.testing.assert_close(loaded.vit.blocks[1].ls2.gamma.detach(), sd["blocks.1.ls2.gamma"], rtol=0, atol=0)


def test_padding_to_patch_multiple_is_zero_padding(write_ckpt):
    path, _ = write_ckpt("official.pth")
    model = DINOv2Backbone(weights=path, **_kw()).eval()
    x = torch.randn(1, 3, 130, 161)
    with torch.no_grad():
        odd = model(x)["last_feat"]
        padded = model(F.pad(x, (0, 176 - 161, 0, 144 - 130)))["last_feat"]
    assert odd.shape == (1, 32, 9, 11)
    torch.testing.assert_close(odd, padded)


def test_detectron2_contract():
    from detectron2.modeling import Backbone

    model = DINOv2Backbone(**_kw())
    assert isinstance(model, Backbone)
    assert model.size_divisibility == 16
    assert model.padding_constraints == {"size_divisibility": 16, "square_size": 0}
    with pytest.raises(ValueError, match=r"expects \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))


# ------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(final_norm=True, out_indices=(0, 1)), dict(out_indices=(0,), depth=3), dict(num_register_tokens=0),
     dict(arch="vit_giant2")],
    ids=["default", "norm_two_outputs", "early_block", "no_regs", "swiglu"],
)
def test_every_trainable_parameter_gets_a_gradient(kw):
    model = DINOv2Backbone(**_kw(**kw)).train()
    out = model(torch.randn(2, 3, 48, 64))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_activation_checkpointing_same_gradients(write_ckpt):
    path, _ = write_ckpt("official.pth")
    x = torch.randn(1, 3, 48, 64)
    grads = []
    for ckpt in (False, True):
        model = DINOv2Backbone(weights=path, use_act_checkpoint=ckpt, **_kw()).train()
        model(x)["last_feat"].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6)


def test_drop_path_rate():
    model = DINOv2Backbone(drop_path_rate=0.2, **_kw())
    rates = [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in model.vit.blocks]  # rate 0: Identity
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["last_feat"], model(x)["last_feat"])


def _frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


STEM = {"vit.cls_token", "vit.reg_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.patch_embed.proj.bias"}


def test_freeze_at():
    depth = 4
    assert _frozen(DINOv2Backbone(freeze_at=0, **_kw(depth=depth))) == set()
    m1 = DINOv2Backbone(freeze_at=1, **_kw(depth=depth))
    assert _frozen(m1) == STEM
    m3 = DINOv2Backbone(freeze_at=3, **_kw(depth=depth))
    first_two = {n for n, _ in m3.named_parameters() if n.startswith(("vit.blocks.0.", "vit.blocks.1."))}
    assert _frozen(m3) == STEM | first_two
    m3.train()
    assert [blk.training for blk in m3.vit.blocks] == [False, False, True, True]
    for freeze in ("all", -1):
        m = DINOv2Backbone(freeze_at=freeze, **_kw(depth=depth)).train()
        assert _frozen(m) == {n for n, _ in m.named_parameters()}
        assert not any(blk.training for blk in m.vit.blocks)
    # register-free: no reg_token to freeze
    assert _frozen(DINOv2Backbone(freeze_at=1, num_register_tokens=0, **_kw())) == STEM - {"vit.reg_token"}
