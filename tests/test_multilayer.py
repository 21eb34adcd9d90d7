"""d2reg.MultiLayerFeaturePyramid and MultiLayerReader on tiny DINOv2 and DINOv3 backbones: levels,
strides, channels and padding in both modes; the concat map with the final norm against independently
computed normalised blocks (timm's get_intermediate_layers on the un-pruned DINOv2 ViT, the official
DINOv3 reference); which block feeds which level; the block rule; YACS / LazyCall builders; the
deliberate errors; gradients of a training step; the linear head's use of the same reader."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import ImageList
from dinov3_reference import get_intermediate_layers, random_official_dinov3_state_dict

from d2reg import (
    DINOv2Backbone,
    DINOv3Backbone,
    LinearSemSegHead,
    MultiLayerFeaturePyramid,
    MultiLayerReader,
    SimpleFeaturePyramid,
    add_d2reg_config,
    evenly_spaced_blocks,
)
from d2reg.modeling.multilayer import default_in_blocks
from d2reg.testing import TINY_DEEP_ARCH, TINY_IMG, write_checkpoint
from d2reg.vit import create_dinov2_vit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
BLOCKS = (0, 1, 2, 3)
FAMILIES = {"dinov2": (DINOv2Backbone, dict(pretrain_img_size=TINY_IMG)), "dinov3": (DINOv3Backbone, {})}


def _net(family="dinov2", out_indices=BLOCKS, **kw):
    cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    return cls(**TINY_DEEP_ARCH, out_indices=out_indices, layer_scale_init=0.5, **extra, **kw)


def _pyramid(net, mode="concat", out_channels=24, **kw):
    kw.setdefault("top_block", LastLevelMaxPool())
    return MultiLayerFeaturePyramid(net, out_channels, mode=mode, **kw)


# ---------------------------------------------------------------- the block rule
def test_evenly_spaced_blocks_dinov3_rule():
    assert evenly_spaced_blocks(12) == (2, 5, 8, 11)
    assert evenly_spaced_blocks(24) == (5, 11, 17, 23)
    assert evenly_spaced_blocks(40) == (9, 19, 29, 39)
    assert evenly_spaced_blocks(4) == BLOCKS and evenly_spaced_blocks(12, n=3) == (3, 7, 11)
    assert default_in_blocks("vit_large") == (5, 11, 17, 23)
    assert default_in_blocks("vit_giant2") == default_in_blocks("vit_7b", "dinov3") == (9, 19, 29, 39)
    assert default_in_blocks("vit_huge_plus", "dinov3") == (7, 15, 23, 31)
    assert default_in_blocks("vit_large", depth=4) == BLOCKS  # depth overrides the arch's (tiny models)
    with pytest.raises(ValueError, match="Cannot take 4 evenly spaced blocks of a 2-block ViT"):
        evenly_spaced_blocks(2)
    with pytest.raises(ValueError, match="family must be 'dinov2' or 'dinov3'"):
        default_in_blocks("vit_base", family="dinov1")


# ---------------------------------------------------------------- levels, strides, channels, padding
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["concat", "per_level"])
def test_levels_strides_channels_and_odd_sizes(family, mode):
    model = _pyramid(_net(family), mode).eval()
    shapes = model.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == LEVELS and {s.channels for s in shapes.values()} == {24}
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    assert model.in_features == ["block0", "block1", "block2", "last_feat"]
    sizes = [(97, 131), (70, 50)]
    batch = ImageList.from_tensors([torch.randn(3, h, w) for h, w in sizes],
                                   padding_constraints=model.padding_constraints)
    H, W = batch.tensor.shape[-2:]
    assert (H, W) == (128, 160)
    with torch.no_grad():
        out = model(batch.tensor)
    assert list(out) == list(LEVELS)
    for name, stride in LEVELS.items():
        assert out[name].shape == (2, 24, -(-H // stride), -(-W // stride)), name
        assert torch.isfinite(out[name]).all()


def test_stage_widths_follow_the_mode():
    concat, per_level = _pyramid(_net(), "concat"), _pyramid(_net(), "per_level")
    projected = _pyramid(_net(), "concat", project=True)
    assert concat.reader.out_channels == 4 * 32 and concat.proj is None and per_level.proj is None
    assert concat.simfp_4[0].in_channels == 4 * 32 and per_level.simfp_4[0].in_channels == 32
    assert concat.simfp_2[0].in_channels == 4 * 32 and per_level.simfp_2[0].in_channels == 32
    assert (projected.proj.in_channels, projected.proj.out_channels) == (4 * 32, 32)
    assert projected.simfp_2[0].in_channels == projected.simfp_4[0].in_channels == 32
    names = {n for n, _ in concat.named_parameters()}
    assert {f"reader.norms.{i}.weight" for i in range(4)} <= names
    assert any(n.startswith("net.vit.blocks.3.") for n in names)  # the ViT keeps its path (lr decay, checkpoints)


# ---------------------------------------------------------------- the concat map is the normalised blocks
def test_concat_final_norm_equals_timm_intermediate_layers():
    """DINOv2: the reader's map with block_norm="final" is the concatenation of timm's
    get_intermediate_layers(norm=True) of an un-pruned ViT (all 4 blocks, head) with the same weights."""
    torch.manual_seed(1)
    ref = create_dinov2_vit("vit_small", 4, 16, pretrain_img_size=TINY_IMG, layer_scale_init=0.5, **TINY_DEEP_ARCH)
    with torch.no_grad():
        ref.norm.weight.normal_(1.0, 0.3)
        ref.norm.bias.normal_(0.0, 0.3)
    ref.eval()
    net = _net(out_indices=(0, 2), final_norm=True)  # pruned to blocks 0-2
    missing, unexpected = net.vit.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("blocks.3.") for k in unexpected)
    model = _pyramid(net, "concat", block_norm="final").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        got = model.reader(model.net(x))
        want = torch.cat(ref.get_intermediate_layers(x, n=(0, 2), reshape=True, norm=True), dim=1)
        raw = torch.cat(ref.get_intermediate_layers(x, n=(0, 2), reshape=True, norm=False), dim=1)
    assert got.shape == (2, 64, 4, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - raw).abs().max() > 0.1  # the norm was applied


def test_concat_final_norm_equals_official_dinov3_reference(tmp_path):
    """DINOv3: the same map against the independent plain-torch reference of the official
    get_intermediate_layers(n=[0, 1, 3], norm=True) (un-pruned, official key names)."""
    sd = random_official_dinov3_state_dict("vit_small", seed=2, embed_dim=128, depth=4, num_heads=2)
    path = write_checkpoint(str(tmp_path / "dinov3_tiny.pth"), sd)
    net = DINOv3Backbone(weights=path, embed_dim=128, depth=4, num_heads=2, out_indices=(0, 1, 3), final_norm=True)
    model = _pyramid(net, "concat", block_norm="final").eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        got = model.reader(model.net(x))
    want = torch.cat(get_intermediate_layers(sd, x, n=[0, 1, 3], norm=True), dim=1)
    assert got.shape == want.shape == (1, 3 * 128, 3, 5)
    assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 1e-4


def test_ln_reader_is_a_layernorm_per_block_over_channels():
    net = _net()
    model = _pyramid(net, "concat")
    with torch.no_grad():
        for norm in model.reader.norms:
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        feats = net(x)
        got = model.reader(feats)
    parts = []
    for name, norm in zip(model.in_features, model.reader.norms):
        t = feats[name].permute(0, 2, 3, 1)
        parts.append(F.layer_norm(t, (32,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, torch.cat(parts, dim=1))


# ---------------------------------------------------------------- which block feeds which level
@pytest.mark.parametrize("mode, project", [("concat", False), ("concat", True), ("per_level", False)])
def test_levels_are_fed_by_the_mode(mode, project):
    model = _pyramid(_net(), mode, project=project).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        blocks = model.reader.normalized(model.net(x))
        cat = torch.cat(blocks, dim=1)
        inputs = [model.proj(cat) if project else cat] * 4 if mode == "concat" else blocks  # per_level: shallow -> p2
        for level, stage, feat in zip(("p2", "p3", "p4", "p5"), model.stages, inputs):
            torch.testing.assert_close(out[level], stage(feat), rtol=0, atol=0)
        torch.testing.assert_close(out["p6"], F.max_pool2d(out["p5"], kernel_size=1, stride=2), rtol=0, atol=0)
        if mode == "per_level":
            assert (out["p2"] - model.stages[0](blocks[3])).abs().max() > 1e-3  # not the last block


def test_in_features_subset_and_order():
    model = _pyramid(_net(), "concat", in_features=["block1", "last_feat"])
    assert model.reader.in_features == ["block1", "last_feat"] and model.simfp_4[0].in_channels == 64


# ---------------------------------------------------------------- builders
def _yacs(**sfp):
    cfg = get_cfg()
    add_d2reg_config(cfg)
    c = cfg.MODEL.D2REG
    c.EMBED_DIM, c.DEPTH, c.NUM_HEADS, c.PRETRAIN_IMG_SIZE = 32, 4, 2, TINY_IMG
    c.SFP.OUT_CHANNELS = 16
    cfg.MODEL.BACKBONE.NAME = "build_d2reg_sfp_backbone"
    for k, v in sfp.items():
        if k in ("FAMILY", "OUT_INDICES", "FINAL_NORM", "DEPTH", "ARCH"):
            setattr(c, k, v)
        else:
            setattr(c.SFP, k, v)
    return cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_yacs_builder_dispatches_on_the_mode(family):
    plain = build_backbone(_yacs(FAMILY=family))
    assert type(plain) is SimpleFeaturePyramid  # MULTILAYER_MODE "" (default): unchanged
    model = build_backbone(_yacs(FAMILY=family, MULTILAYER_MODE="concat"))
    assert type(model) is MultiLayerFeaturePyramid and model.mode == "concat"
    assert type(model.net) is FAMILIES[family][0] and model.net._take == list(BLOCKS)  # evenly spaced of 4
    assert model.reader.norm == "ln" and list(model.output_shape()) == list(LEVELS)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["p6"].shape == (1, 16, 1, 1)
    assert model.proj is None
    assert build_backbone(_yacs(FAMILY=family, MULTILAYER_MODE="concat", PROJECT=True)).proj.out_channels == 32
    per_level = build_backbone(_yacs(FAMILY=family, MULTILAYER_MODE="per_level", IN_BLOCKS=[0, 1, -2, -1],
                                     BLOCK_NORM="final", FINAL_NORM=True, TOP_BLOCK=False))
    assert per_level.mode == "per_level" and per_level.net._take == [0, 1, 2, 3] and per_level.net.final_norm
    assert list(per_level.output_shape()) == ["p2", "p3", "p4", "p5"]


def test_yacs_block_choice_and_its_errors():
    model = build_backbone(_yacs(MULTILAYER_MODE="concat", IN_BLOCKS=[1, 3]))
    assert model.in_features == ["block1", "last_feat"] and model.net.num_layers == 4
    same = build_backbone(_yacs(MULTILAYER_MODE="concat", IN_BLOCKS=[1, 3], OUT_INDICES=[1, -1]))
    assert same.net._take == [1, 3]
    with pytest.raises(ValueError, match=r"MODEL.D2REG.SFP.IN_BLOCKS entry 7 is out of range for a 4-block ViT"):
        build_backbone(_yacs(MULTILAYER_MODE="concat", IN_BLOCKS=[1, 7]))
    with pytest.raises(ValueError, match=r"OUT_INDICES \[0, 1\] disagrees .* set MODEL.D2REG.SFP.IN_BLOCKS"):
        build_backbone(_yacs(MULTILAYER_MODE="concat", OUT_INDICES=[0, 1]))
    with pytest.raises(ValueError, match=r"mode must be one of \('concat', 'per_level'\).*MULTILAYER_MODE.*'stack'"):
        build_backbone(_yacs(MULTILAYER_MODE="stack"))
    with pytest.raises(ValueError, match=r"Cannot take 4 evenly spaced blocks of a 2-block ViT"):
        build_backbone(_yacs(MULTILAYER_MODE="concat", DEPTH=2))


def test_lazycall_builds_with_the_default_rule():
    cfg = L(MultiLayerFeaturePyramid)(
        net=L(DINOv3Backbone)(arch="vit_small", **TINY_DEEP_ARCH,
                              out_indices=L(default_in_blocks)(arch="${..arch}", depth="${..depth}", family="dinov3")),
        out_channels=16,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        mode="per_level",
        top_block=L(LastLevelMaxPool)(),
        square_pad=128,
    )
    model = instantiate(cfg)
    assert isinstance(model, MultiLayerFeaturePyramid) and model.net._take == list(BLOCKS)
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 128}
    assert {k: s.stride for k, s in model.output_shape().items()} == LEVELS


# ---------------------------------------------------------------- deliberate errors
@pytest.mark.parametrize("kwargs, net_kw, message", [
    (dict(mode="stacked"), {}, r"mode must be one of \('concat', 'per_level'\)"),
    (dict(block_norm="bn"), {}, r"block_norm must be one of \('ln', 'final', 'none'\)"),
    (dict(in_features=["block1", "block9"]), {}, r"reads \['block9'\].*add those blocks to its out_indices"),
    (dict(mode="per_level"), dict(out_indices=(1, 3)), r"one block to each of the 4 scale factors.*reads 2"),
    (dict(block_norm="final"), {}, r"built without it: final_norm=True"),
    (dict(block_norm="ln"), dict(final_norm=True), r"already applies its final norm"),
    (dict(mode="per_level", project=True), {}, r"project=True .* narrows the 'concat' map"),
])
def test_clear_errors(kwargs, net_kw, message):
    with pytest.raises(ValueError, match=message):
        _pyramid(_net(**dict(dict(out_indices=BLOCKS), **net_kw)), **kwargs)


def test_backbone_block_out_of_range_and_reader_errors():
    with pytest.raises(ValueError, match="out_indices entry 4 is out of range for a 4-block ViT"):
        _net(out_indices=(0, 4))
    with pytest.raises(ValueError, match=r"norm must be one of \('ln', 'none'\)"):
        MultiLayerReader(["a"], [8], norm="bn")
    with pytest.raises(ValueError, match="one channel count per feature"):
        MultiLayerReader(["a", "b"], [8])


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("mode, project", [("concat", True), ("per_level", False)])
def test_training_step_gives_gradients_to_norms_and_pyramid(mode, project):
    frozen = _pyramid(_net(freeze_at="all", frozen_dtype="bfloat16"), mode, project=project).train()  # fp32 out
    trained = _pyramid(_net(), mode, project=project).train()
    x = torch.randn(2, 3, 64, 64)
    for model in (frozen, trained):
        sum(v.square().mean() for v in model(x).values()).backward()
        for name, p in model.named_parameters():
            if not name.startswith("net."):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in frozen.net.parameters())
    for name, p in trained.net.named_parameters():  # every ViT parameter trains (no unused ones for DDP)
        assert p.grad is not None, name


# ---------------------------------------------------------------- the linear probe shares the reader
def test_linear_head_reads_with_the_same_reader():
    net = _net(out_indices=(-4, -3, -2, -1), final_norm=True, patch_size=14)
    head = LinearSemSegHead(net.output_shape(), num_classes=3).eval()
    assert isinstance(head.reader, MultiLayerReader) and head.reader.norm == "none"
    assert head.reader.in_features == list(net.output_shape()) and head.in_channels == 4 * 32
    assert not any(k.startswith("reader.") for k in head.state_dict())  # checkpoints unchanged
    feats = {"a": torch.randn(1, 8, 4, 6), "b": torch.randn(1, 8, 2, 3)}
    other = LinearSemSegHead({"a": ShapeSpec(channels=8, stride=16), "b": ShapeSpec(channels=8, stride=32)},
                             num_classes=2, norm="")
    want = torch.cat([feats["a"], F.interpolate(feats["b"], size=(4, 6), mode="bilinear")], dim=1)
    torch.testing.assert_close(other.reader(feats), want)


# ---------------------------------------------------------------- the frozen recipes at full size
FROZEN = [("COCO/mask_rcnn_vit_l_frozen_100ep", DINOv2Backbone, 5),
          ("COCO/mask_rcnn_dinov3_vit_l_frozen_100ep", DINOv3Backbone, 5),
          ("ADE20k/sem_fpn_vit_l_frozen_80k", DINOv2Backbone, 4),
          ("ADE20k/sem_fpn_dinov3_vit_l_frozen_80k", DINOv3Backbone, 4)]


def _meta_lazy(rel, overrides=()):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIGS / f"{rel}.py")), list(overrides))
    cfg.model.backbone.net.weights = None
    with torch.device("meta"):
        return cfg, instantiate(cfg.model)


@pytest.mark.parametrize("rel, family, levels", FROZEN)
def test_frozen_recipes_lazy_and_yacs_agree(rel, family, levels):
    """Full-size ViT-L on the meta device: the multi-layer concat pyramid over blocks 5/11/17/23 of a
    frozen ViT in both config systems, the same trainable pyramid; the optimizer sees no ViT parameter."""
    cfg, model = _meta_lazy(rel)
    ycfg = get_cfg()
    add_d2reg_config(ycfg)
    ycfg.merge_from_file(str(CONFIGS / f"{rel}.yaml"))
    ycfg.merge_from_list(["MODEL.D2REG.WEIGHTS", "", "MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        ymodel = build_model(ycfg)
    for m in (model, ymodel):
        bb = m.backbone
        assert type(bb) is MultiLayerFeaturePyramid and type(bb.net) is family, rel
        assert (bb.mode, bb.reader.norm, bb.net._take) == ("concat", "ln", [5, 11, 17, 23])
        assert bb.net.arch.name == "vit_large" and len(bb.output_shape()) == levels
        assert not any(p.requires_grad for p in bb.net.parameters())
    trainable = [sum(p.numel() for p in m.backbone.parameters() if p.requires_grad) for m in (model, ymodel)]
    assert trainable[0] == trainable[1] > 0
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert not {id(p) for p in model.backbone.net.parameters()} & {id(p) for g in opt.param_groups for p in g["params"]}


def test_frozen_recipe_blocks_follow_the_backbone():
    """The blocks are the rule of the backbone's own size and family: overrides move them."""
    _, base = _meta_lazy("COCO/mask_rcnn_dinov3_vit_l_frozen_100ep", ["model.backbone.net.arch=vit_base"])
    assert base.backbone.net._take == [2, 5, 8, 11]
    key = "model.backbone.net.out_indices"
    for overrides, take in (([f"{key}.n=3"], [7, 15, 23]), ([f"{key}=null", f"{key}=[3,7,11,15]"], [3, 7, 11, 15])):
        assert _meta_lazy("COCO/mask_rcnn_vit_l_frozen_100ep", overrides)[1].backbone.net._take == take  # as documented
    _, g = _meta_lazy("COCO/mask_rcnn_vit_g_frozen_100ep")
    assert g.backbone.net._take == [9, 19, 29, 39] and not g.backbone.net.vit.grad_checkpointing
    assert {p.dtype for p in g.backbone.net.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in g.backbone.net.parameters()) == pytest.approx(1.14e9, rel=0.02)
    assert not any(p.requires_grad for p in g.backbone.net.parameters())
    _, b7 = _meta_lazy("COCO/mask_rcnn_dinov3_vit_7b_frozen_100ep")
    net = b7.backbone.net
    assert type(net) is DINOv3Backbone and net._take == [9, 19, 29, 39] and net.frozen_dtype == torch.bfloat16
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(6.7e9, rel=0.02)
    assert (b7.backbone.proj.in_channels, b7.backbone.proj.out_channels) == (4 * 4096, 4096)
    trainable = sum(p.numel() for p in b7.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in net.parameters()) and trainable < 0.2e9  # the projection keeps it small
    ycfg = get_cfg()  # its YACS form, as the .yaml's comment gives it
    add_d2reg_config(ycfg)
    ycfg.merge_from_file(str(CONFIGS / "COCO/mask_rcnn_dinov3_vit_l_frozen_100ep.yaml"))
    ycfg.merge_from_list(["MODEL.D2REG.ARCH", "vit_7b", "MODEL.D2REG.FROZEN_DTYPE", "bfloat16",
                          "MODEL.D2REG.SFP.PROJECT", True, "MODEL.D2REG.WEIGHTS", "", "MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        ymodel = build_model(ycfg)
    assert ymodel.backbone.net._take == net._take and ymodel.backbone.net.frozen_dtype == torch.bfloat16
    assert sum(p.numel() for p in ymodel.parameters() if p.requires_grad) == trainable
