"""d2reg.SimpleFeaturePyramid on DINOv2Backbone: levels, strides, channels, padding of odd sizes,
batches, the patch-14 error, the upstream padding bug it fixes, and the YACS / LazyCall builders."""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling.backbone import vit as d2_vit
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import ImageList

from d2reg import DINOv2Backbone, SimpleFeaturePyramid
from d2reg.testing import TINY_ARCH, TINY_IMG

LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
SCALES = (4.0, 2.0, 1.0, 0.5)


def _net(**kw):
    return DINOv2Backbone(**dict(TINY_ARCH, pretrain_img_size=TINY_IMG, **kw))


def _sfp(net=None, out_channels=32, cls=SimpleFeaturePyramid):
    return cls(net or _net(), "last_feat", out_channels, SCALES, top_block=LastLevelMaxPool(), norm="LN").eval()


def test_levels_strides_channels():
    model = _sfp(out_channels=48)
    shapes = model.output_shape()
    assert list(shapes) == list(LEVELS)
    assert {k: s.stride for k, s in shapes.items()} == LEVELS
    assert {s.channels for s in shapes.values()} == {48}
    assert model.size_divisibility == 32
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 0}


@pytest.mark.parametrize("sizes", [[(97, 131)], [(97, 131), (150, 70)], [(64, 64), (65, 95), (33, 127)]])
def test_odd_sizes_and_batches_through_imagelist(sizes):
    model = _sfp()
    images = [torch.randn(3, h, w) for h, w in sizes]
    batch = ImageList.from_tensors(images, padding_constraints=model.padding_constraints)
    H, W = batch.tensor.shape[-2:]
    assert H % 32 == 0 and W % 32 == 0
    assert H == -(-max(h for h, _ in sizes) // 32) * 32 and W == -(-max(w for _, w in sizes) // 32) * 32
    with torch.no_grad():
        out = model(batch.tensor)
    assert list(out) == list(LEVELS)
    for name, stride in LEVELS.items():
        # p2-p5: exactly the padded size / stride. p6 (LastLevelMaxPool: kernel 1, stride 2 on p5) is
        # ceil(padded / 64): padding goes to the coarsest *input* stride, 32, as in detectron2's FPN.
        expected = (-(-H // stride), -(-W // stride))
        if name != "p6":
            assert H % stride == 0 and W % stride == 0
        assert out[name].shape == (len(sizes), 32, *expected), name
        assert torch.isfinite(out[name]).all()


def test_batch_elements_are_independent():
    model = _sfp()
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    for name in LEVELS:
        torch.testing.assert_close(together[name][1:2], alone[name], rtol=1e-4, atol=1e-5)


def test_patch14_with_four_scales_raises_clear_error():
    net = _net(patch_size=14)
    with pytest.raises(ValueError) as e:
        _sfp(net)
    msg = str(e.value)
    assert "power-of-two strides" in msg and "14" in msg and "patch_size=16" in msg


def test_patch8_three_scales_top_block_pools_coarsest_level():
    """Upstream's LastLevelMaxPool reads "p5"; with patch 8 and (2, 1, 0.5) the levels are p2-p4."""
    model = SimpleFeaturePyramid(_net(patch_size=8), "last_feat", 32, (2.0, 1.0, 0.5),
                                 top_block=LastLevelMaxPool(), norm="LN").eval()
    assert {k: s.stride for k, s in model.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    sizes = {k: tuple(v.shape[-2:]) for k, v in out.items()}
    assert sizes == {"p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3)}
    torch.testing.assert_close(out["p5"], torch.nn.functional.max_pool2d(out["p4"], 1, 2))


def test_patch14_single_scale():
    net = _net(patch_size=14)
    model = SimpleFeaturePyramid(net, "last_feat", 32, (1.0,), top_block=None, norm="LN").eval()
    (shape,) = model.output_shape().values()
    assert shape.stride == 14
    with torch.no_grad():
        (out,) = model(torch.randn(1, 3, 140, 168)).values()
    assert out.shape == (1, 32, 10, 12)


def test_same_weights_and_outputs_as_upstream():
    ours = _sfp()
    upstream = _sfp(cls=d2_vit.SimpleFeaturePyramid)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 128)  # a multiple of 32: no padding question
    with torch.no_grad():
        a, b = ours(x), upstream(x)
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_upstream_padding_constraints_still_misspelt():
    """Documents detectron2's bug that d2reg.SimpleFeaturePyramid works around: upstream returns
    "size_divisiblity" (sic) and has no size_divisibility, so ImageList pads odd images to nothing
    unless square_pad > 0. If this test fails, upstream fixed it: the override may go."""
    upstream = _sfp(cls=d2_vit.SimpleFeaturePyramid)
    constraints = upstream.padding_constraints
    assert "size_divisibility" not in constraints, "detectron2 fixed SimpleFeaturePyramid.padding_constraints"
    assert constraints.get("size_divisiblity") == 32
    assert upstream.size_divisibility == 0  # Backbone's default: never set upstream
    batch = ImageList.from_tensors([torch.randn(3, 97, 131)], upstream.size_divisibility,
                                   padding_constraints=constraints)  # as GeneralizedRCNN.preprocess_image
    assert tuple(batch.tensor.shape[-2:]) == (97, 131)  # not padded to 32
    fixed = ImageList.from_tensors([torch.randn(3, 97, 131)], _sfp().size_divisibility,
                                   padding_constraints=_sfp().padding_constraints)
    assert tuple(fixed.tensor.shape[-2:]) == (128, 160)


def test_yacs_builder_registered(tiny_maskrcnn_cfg):
    from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

    import d2reg  # noqa: F401  (importing d2reg registers the builder)

    assert "build_d2reg_sfp_backbone" in BACKBONE_REGISTRY
    backbone = build_backbone(tiny_maskrcnn_cfg())
    assert isinstance(backbone, SimpleFeaturePyramid)
    assert {k: (s.stride, s.channels) for k, s in backbone.output_shape().items()} == {
        k: (v, 32) for k, v in LEVELS.items()}
    assert backbone.padding_constraints["size_divisibility"] == 32


def test_lazycall():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    cfg = L(SimpleFeaturePyramid)(
        net=L(DINOv2Backbone)(**TINY_ARCH, pretrain_img_size=TINY_IMG, out_indices=[-1]),
        in_feature="last_feat", out_channels=32, scale_factors=SCALES, top_block=L(LastLevelMaxPool)(), norm="LN",
    )
    model = instantiate(cfg).eval()
    assert isinstance(model.net, DINOv2Backbone)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p2": 16, "p3": 8, "p4": 4, "p5": 2, "p6": 1}
