"""Patch 14 -> 16: shapes, the pseudo-inverse (FlexiViT) kernel resize against the patch-14
projection of the same smooth content, the bicubic option, and patch 14 left unchanged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2reg import DINOv2Backbone
from d2reg.testing import TINY_ARCH, TINY_IMG
from d2reg.vit import resize_patch_embed_weight

# Relative L2 error of the PI-resized projection vs the patch-14 projection on smooth content.
# Measured ~0.3-0.4% (the residue is the difference between bilinear whole-image upsampling and the
# per-patch resize PI inverts); plain bicubic is ~30% off (the response grows by ~(16/14)^2).
PI_TOL = 0.02


def _smooth_pair(grid=6, low=6, batch=2, seed=0):
    """The same smooth content (a random low x low image, bilinearly upsampled) rendered on a
    grid x grid patch-14 canvas and a grid x grid patch-16 canvas."""
    base = torch.randn(batch, 3, low, low, generator=torch.Generator().manual_seed(seed))
    up = dict(mode="bilinear", align_corners=False)
    return F.interpolate(base, size=(14 * grid,) * 2, **up), F.interpolate(base, size=(16 * grid,) * 2, **up)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _kw(**kw):
    return dict(TINY_ARCH, pretrain_img_size=TINY_IMG, **kw)  # the tiny_kwargs fixture's model


def test_pi_resize_preserves_projection_of_smooth_images(write_ckpt):
    _, sd = write_ckpt("official.pth")
    w14 = sd["patch_embed.proj.weight"]
    img14, img16 = _smooth_pair()
    ref = F.conv2d(img14, w14, stride=14)
    pi = F.conv2d(img16, resize_patch_embed_weight(w14, 16, "pi"), stride=16)
    bicubic = F.conv2d(img16, resize_patch_embed_weight(w14, 16, "bicubic"), stride=16)
    err_pi, err_bicubic = _rel(pi, ref), _rel(bicubic, ref)
    assert err_pi < PI_TOL, err_pi
    assert err_pi < err_bicubic / 10, (err_pi, err_bicubic)


@pytest.mark.parametrize("method", ["pi", "bicubic"])
def test_backbone_patch16_from_patch14_checkpoint(write_ckpt, method):
    path, sd = write_ckpt("official.pth")
    model = DINOv2Backbone(patch_size=16, patch_resize=method, weights=path, **_kw()).eval()
    kernel = model.vit.patch_embed.proj.weight
    assert kernel.shape == (32, 3, 16, 16)
    torch.testing.assert_close(kernel, resize_patch_embed_weight(sd["patch_embed.proj.weight"], 16, method))
    assert model.output_shape()["last_feat"].stride == 16
    assert model.padding_constraints["size_divisibility"] == 16
    with torch.no_grad():
        for (h, w), grid in [((128, 160), (8, 10)), ((130, 161), (9, 11)), ((224, 224), (14, 14))]:
            out = model(torch.randn(2, 3, h, w))
            assert list(out) == ["last_feat"]
            assert out["last_feat"].shape == (2, 32, *grid)
            assert torch.isfinite(out["last_feat"]).all()


def test_backbone_patch_embed_pi_vs_patch14(write_ckpt):
    """Through the models: the patch-16 backbone's patch embedding of the smooth 16-px image is
    close to the patch-14 backbone's patch embedding of the 14-px image."""
    path, _ = write_ckpt("official.pth")
    m14 = DINOv2Backbone(patch_size=14, weights=path, **_kw()).eval()
    m16 = DINOv2Backbone(patch_size=16, weights=path, **_kw()).eval()
    bic = DINOv2Backbone(patch_size=16, patch_resize="bicubic", weights=path, **_kw()).eval()
    img14, img16 = _smooth_pair()
    with torch.no_grad():
        ref = m14.vit.patch_embed(img14)  # (B, h, w, C): timm's NHWC patch embedding
        err_pi = _rel(m16.vit.patch_embed(img16), ref)
        err_bicubic = _rel(bic.vit.patch_embed(img16), ref)
    assert err_pi < PI_TOL and err_pi < err_bicubic / 10, (err_pi, err_bicubic)


def test_patch14_unchanged_single_scale(write_ckpt):
    path, sd = write_ckpt("official.pth")
    model = DINOv2Backbone(patch_size=14, weights=path, **_kw()).eval()
    assert torch.equal(model.vit.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    assert model.output_shape() == {"last_feat": model.output_shape()["last_feat"]}
    assert model.output_shape()["last_feat"].stride == 14
    assert model.output_shape()["last_feat"].channels == 32
    with torch.no_grad():
        out = model(torch.randn(1, 3, 140, 182))["last_feat"]
        assert out.shape == (1, 32, 10, 13)
        odd = model(torch.randn(1, 3, 141, 183))["last_feat"]  # padded to the patch multiple
        assert odd.shape == (1, 32, 11, 14)


def test_resize_rejects_unknown_method():
    with pytest.raises(ValueError, match="patch_resize must be 'pi' or 'bicubic'"):
        resize_patch_embed_weight(torch.zeros(4, 3, 14, 14), 16, "nearest")
