"""Every shipped config loads and builds its model.

All ``configs/**/*.py`` (LazyConfig) and ``configs/**/*.yaml`` (YACS) are collected by glob, so files
added later are covered too. Full-size ViTs would take too long on a CPU: every DINOv2Backbone is
shrunk to a tiny ViT (32 wide, 4 blocks, 2 heads) and its weights file dropped before the model is
built; everything else (pyramid, heads, meta-architecture, optimizer, schedule, data mappers) is built
as configured. The every-config tests build on PyTorch's "meta" device (all constructors and shapes,
no weight initialisation: random-initialising the 12.8M-weight box-head FCs of ~50 configs dominated
the CPU time); a few configs are built on the CPU and run inference, the ViT-S recipe is built at
full size once, and the default checkpoint paths and the register switch are exercised with tiny
checkpoints on disk. The per-size recipe (d2reg.recipes) is checked to follow ``arch`` /
``num_register_tokens`` overrides in both config systems.
configs/detrex needs detrex (not on PyPI): those files are skipped here when it is missing
(tests/test_detrex_configs.py covers them).
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig

from d2reg import DINOv2Backbone, add_d2reg_config
from d2reg.config import resolve_recipe
from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES, official_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PY_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
YAML_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
TINY = dict(embed_dim=32, depth=4, num_heads=2, pretrain_img_size=224)
TINY_YACS = ["MODEL.D2REG.EMBED_DIM", 32, "MODEL.D2REG.DEPTH", 4, "MODEL.D2REG.NUM_HEADS", 2,
             "MODEL.D2REG.PRETRAIN_IMG_SIZE", 224, "MODEL.D2REG.WEIGHTS", "", "MODEL.WEIGHTS", "",
             "MODEL.DEVICE", "cpu"]
# inference on random weights: few proposals, so the 4conv box heads stay cheap on a CPU
FEW_PROPOSALS_YACS = ["MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 16]
HAS_DETREX = importlib.util.find_spec("detrex") is not None
BACKBONE_NAMES = {"d2reg.DINOv2Backbone", "d2reg.modeling.DINOv2Backbone", "d2reg.modeling.backbone.DINOv2Backbone"}


def test_configs_are_found():
    for needed in ("COCO/mask_rcnn_vit_s_100ep.py", "COCO/cascade_mask_rcnn_vit_l_100ep.py",
                   "ADE20k/linear_vit_b_40k.py", "ADE20k/sem_fpn_vit_g_80k.py"):
        assert needed in PY_CONFIGS
    for needed in ("COCO/mask_rcnn_vit_b_100ep.yaml", "ADE20k/linear4_vit_b_40k.yaml"):
        assert needed in YAML_CONFIGS


# ---------------------------------------------------------------- helpers
def _is_backbone(node) -> bool:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return target is DINOv2Backbone or (isinstance(target, str) and target in BACKBONE_NAMES)


def _backbone_nodes(node):
    """Every LazyCall(DINOv2Backbone) node in a config tree."""
    if isinstance(node, DictConfig):
        if _is_backbone(node):
            yield node
        for v in node.values():
            yield from _backbone_nodes(v)
    elif isinstance(node, ListConfig):
        for v in node:
            yield from _backbone_nodes(v)


def shrink(cfg, weights=True) -> list:
    """Tiny ViT in every DINOv2Backbone of ``cfg.model`` (and weights dropped unless ``weights=False``)."""
    nets = list(_backbone_nodes(cfg.model))
    for net in nets:
        net.update(TINY)
        if weights:
            net.weights = None
    return nets


def load_lazy(rel: str):
    try:
        return LazyConfig.load(str(CONFIGS / rel))
    except ModuleNotFoundError as e:
        if rel.startswith("detrex/") and (e.name or "").split(".")[0] == "detrex" and not HAS_DETREX:
            pytest.skip("needs detrex (tests/test_detrex_configs.py covers configs/detrex)")
        raise


def yacs_cfg(rel: str, *opts, resolve: bool = True):
    """A YACS config as tools/train_net.py reads it, recipe placeholders resolved (d2reg.config.resolve_recipe)."""
    cfg = get_cfg()
    add_d2reg_config(cfg)
    cfg.merge_from_file(str(CONFIGS / rel))
    cfg.merge_from_list(list(opts))
    return resolve_recipe(cfg) if resolve else cfg


def image_batch(sizes=((96, 128),)):
    torch.manual_seed(0)
    return [{"image": torch.rand(3, h, w) * 255} for h, w in sizes]


# ---------------------------------------------------------------- every LazyConfig
@pytest.mark.parametrize("rel", PY_CONFIGS)
def test_lazyconfig_loads_and_builds(rel):
    cfg = load_lazy(rel)
    if "model" not in cfg:  # a shared piece (configs/common): loading it is the check
        return
    nets = shrink(cfg)
    with torch.device("meta"):
        model = instantiate(cfg.model)
        assert isinstance(model, torch.nn.Module)
        if nets:
            assert any(isinstance(m, DINOv2Backbone) for m in model.modules())
        if "optimizer" in cfg:  # layer decay / overrides resolve against the real parameter names
            cfg.optimizer.params.model = model
            opt = instantiate(cfg.optimizer)
            n_trainable = sum(p.requires_grad for p in model.parameters())
            assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    if "lr_multiplier" in cfg:
        sched = instantiate(cfg.lr_multiplier)
        assert 0 <= sched(0.0) <= 1 and 0 <= sched(0.5) <= 1
    if "dataloader" in cfg and "mapper" in cfg.dataloader.get("train", {}):
        for split in ("train", "test"):
            instantiate(cfg.dataloader[split].mapper)  # the augmentations build (no data needed)


# ---------------------------------------------------------------- every YACS config
def _yaml_bases() -> set:
    bases = set()
    for rel in YAML_CONFIGS:
        text = (CONFIGS / rel).read_text()
        for line in text.splitlines():
            if line.startswith("_BASE_:"):
                base = line.split(":", 1)[1].split("#")[0].strip().strip("\"'")
                bases.add(os.path.normpath((Path(rel).parent / base).as_posix()))
    return bases


@pytest.mark.parametrize("rel", YAML_CONFIGS)
def test_yacs_loads_and_builds(rel):
    cfg = yacs_cfg(rel, *TINY_YACS, "MODEL.DEVICE", "meta")
    if not cfg.MODEL.BACKBONE.NAME.startswith("build_d2reg"):
        # a partial base (e.g. data + solver only): it must be the _BASE_ of configs that build
        assert rel in _yaml_bases(), f"{rel} names no d2reg backbone and is no other config's _BASE_"
        return
    with torch.device("meta"):
        model = build_model(cfg)
    assert any(isinstance(m, DINOv2Backbone) for m in model.modules())


# ---------------------------------------------------------------- inference through a few configs
def _check_instances(outputs, sizes):
    assert len(outputs) == len(sizes)
    for out, (h, w) in zip(outputs, sizes):
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())


NOREG = "model.backbone.net.num_register_tokens=0"


@pytest.mark.parametrize("rel, overrides", [("COCO/mask_rcnn_vit_s_100ep.py", []),
                                             ("COCO/cascade_mask_rcnn_vit_b_100ep.py", [NOREG])])
def test_lazyconfig_instance_seg_inference(rel, overrides):
    cfg = LazyConfig.apply_overrides(load_lazy(rel), overrides)
    shrink(cfg)
    cfg.model.backbone.square_pad = 256  # the 1024 of the recipe, scaled down with the images
    cfg.model.proposal_generator.update(pre_nms_topk=(2000, 100), post_nms_topk=(1000, 16))
    model = instantiate(cfg.model).eval()
    sizes = [(96, 128), (120, 80)]
    with torch.no_grad():
        outputs = model(image_batch(sizes))
    _check_instances(outputs, sizes)
    for out, size in zip(outputs, sizes):
        if len(out["instances"]):
            assert out["instances"].pred_masks.shape[-2:] == size


def test_yacs_instance_seg_inference():
    cfg = yacs_cfg("COCO/cascade_mask_rcnn_vit_b_100ep.yaml", *TINY_YACS, *FEW_PROPOSALS_YACS,
                   "MODEL.D2REG.SFP.SQUARE_PAD", 256, "MODEL.D2REG.ARCH", "vit_small")
    model = build_model(cfg).eval()
    sizes = [(100, 90)]
    with torch.no_grad():
        _check_instances(model(image_batch(sizes)), sizes)


@pytest.mark.parametrize("rel", ["ADE20k/linear4_vit_s_40k.py", "ADE20k/sem_fpn_vit_l_80k.py",
                                 "ADE20k/linear_vit_b_40k.yaml", "ADE20k/sem_fpn_vit_b_80k.yaml"])
def test_sem_seg_inference(rel):
    if rel.endswith(".yaml"):
        opts = ("MODEL.D2REG.ARCH", "vit_giant2", "MODEL.D2REG.NUM_REGISTER_TOKENS", 0)
        model = build_model(yacs_cfg(rel, *TINY_YACS, *opts))
    else:
        cfg = load_lazy(rel)
        shrink(cfg)
        model = instantiate(cfg.model)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 70, 90) * 255, "height": 35, "width": 45}])
    assert out["sem_seg"].shape == (150, 35, 45)


# ---------------------------------------------------------------- the recipe itself
def test_full_size_vit_s_mask_rcnn_and_its_optimizer():
    """ViT-S Mask R-CNN at its real size (random init): the right ViT, the ViTDet pyramid, and the
    layer-decay / weight-decay groups of the optimizer on the real parameter names."""
    cfg = load_lazy("COCO/mask_rcnn_vit_s_100ep.py")
    assert instantiate(cfg.model.backbone.net.weights).endswith("dinov2_vits14_reg4_pretrain.pth")
    cfg.model.backbone.net.weights = None
    model = instantiate(cfg.model)
    vit = model.backbone.net.vit
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(21.6e6, rel=0.03)
    assert len(vit.blocks) == 12 and vit.embed_dim == 384 and vit.reg_token.shape[1] == 4
    assert model.backbone.padding_constraints == {"size_divisibility": 32, "square_size": 1024}
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # linear 0 -> 0.1 over the blocks
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = 1e-4
    assert groups[id(named["backbone.net.vit.patch_embed.proj.weight"])]["lr"] == pytest.approx(lr * 0.7 ** 13)
    assert groups[id(named["backbone.net.vit.blocks.11.mlp.fc1.weight"])]["lr"] == pytest.approx(lr * 0.7)
    assert groups[id(named["roi_heads.box_predictor.cls_score.weight"])]["lr"] == pytest.approx(lr)
    for name in ("backbone.net.vit.pos_embed", "backbone.net.vit.reg_token", "backbone.net.vit.cls_token"):
        assert groups[id(named[name])]["weight_decay"] == 0.0
    assert cfg.dataloader.train.total_batch_size == 64 and cfg.train.max_iter == 184375


# ---------------------------------------------------------------- the recipe follows arch / registers
def _lazy_recipe(cfg):
    """(weights, drop path, layer decay) the LazyConfig's backbone and optimizer resolve to."""
    net = cfg.model.backbone.net if "net" in cfg.model.backbone else cfg.model.backbone
    decay = cfg.optimizer.params.get("lr_decay", 1.0)
    return instantiate(net.weights), instantiate(net.drop_path_rate), instantiate(decay)


def _yacs_recipe(cfg):
    c = cfg.MODEL.D2REG
    return c.WEIGHTS, c.DROP_PATH_RATE, c.LR_DECAY


@functools.cache
def _loaded(rel: str):
    return load_lazy(rel)


# one config per task and system; every other size / register setting is an override of these
TASKS = [("COCO/mask_rcnn_vit_b_100ep", "model.backbone.net"),
         ("COCO/cascade_mask_rcnn_vit_b_100ep", "model.backbone.net"),
         ("ADE20k/sem_fpn_vit_b_80k", "model.backbone.net"),
         ("ADE20k/linear_vit_b_40k", "model.backbone"),
         ("ADE20k/linear4_vit_b_40k", "model.backbone")]


@pytest.mark.parametrize("family, arch", sorted(RECIPES))
@pytest.mark.parametrize("registers", [4, 0])
def test_recipe_follows_arch_and_registers(family, arch, registers):
    """A command-line override of arch / registers moves weights, drop path and layer decay together,
    in the LazyConfig and in the YACS config (resolve_recipe) alike: both read d2reg.recipes."""
    row = RECIPES[(family, arch)]
    for stem, net in TASKS:
        lazy = LazyConfig.apply_overrides(copy.deepcopy(_loaded(stem + ".py")),
                                          [f"{net}.arch={arch}", f"{net}.num_register_tokens={registers}"])
        yacs = yacs_cfg(stem + ".yaml", "MODEL.D2REG.ARCH", arch, "MODEL.D2REG.NUM_REGISTER_TOKENS", registers)
        frozen = stem.startswith("ADE20k/linear")  # the probes: frozen ViT, no drop path or layer decay
        want = (official_checkpoint(arch, registers, family), 0.0 if frozen else row.drop_path,
                1.0 if frozen else row.layer_decay)
        assert _lazy_recipe(lazy) == pytest.approx(want) and _yacs_recipe(yacs) == pytest.approx(want), stem
        assert yacs.MODEL.D2REG.FAMILY == family


def test_yacs_recipe_placeholders():
    """The shipped YACS files leave the per-size values to the table; resolve_recipe fills them in
    without touching the (possibly frozen) input and leaves explicit values alone."""
    raw = yacs_cfg("COCO/mask_rcnn_vit_b_100ep.yaml", "MODEL.D2REG.ARCH", "vit_large", resolve=False)
    assert _yacs_recipe(raw) == ("official", -1.0, -1.0)
    raw.freeze()
    resolved = resolve_recipe(raw)
    assert _yacs_recipe(raw) == ("official", -1.0, -1.0) and resolved.is_frozen()
    assert _yacs_recipe(resolved) == (official_checkpoint("vit_large", 4), 0.4, 0.65)
    assert resolve_recipe(resolved) is resolved
    explicit = yacs_cfg("COCO/mask_rcnn_vit_b_100ep.yaml", "MODEL.D2REG.WEIGHTS", "/w.pth",
                        "MODEL.D2REG.DROP_PATH_RATE", 0.2, "MODEL.D2REG.LR_DECAY", 0.9)
    assert _yacs_recipe(explicit) == ("/w.pth", 0.2, 0.9)
    with pytest.raises(KeyError, match="no recipe for dinov2/vit_huge"):
        yacs_cfg("COCO/mask_rcnn_vit_b_100ep.yaml", "MODEL.D2REG.ARCH", "vit_huge")


def test_yacs_builders_resolve_the_recipe():
    """build_model / build_optimizer on an unresolved shipped YACS config take the recipe's values
    (any caller: tools/train_net.py, tests, tools that build a model from a config)."""
    from d2reg.solver import build_optimizer

    cfg = yacs_cfg("ADE20k/sem_fpn_vit_b_80k.yaml", *TINY_YACS, resolve=False)
    assert cfg.MODEL.D2REG.DROP_PATH_RATE < 0 and cfg.MODEL.D2REG.LR_DECAY < 0
    model = build_model(cfg)
    vit = next(m for m in model.modules() if isinstance(m, DINOv2Backbone)).vit
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(RECIPES[("dinov2", "vit_base")].drop_path)
    opt = build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay, depth = RECIPES[("dinov2", "vit_base")].layer_decay, len(vit.blocks)
    assert lrs[id(vit.patch_embed.proj.weight)] == pytest.approx(cfg.SOLVER.BASE_LR * decay ** (depth + 1))


def test_imagenet_normalisation_is_one_constant():
    """The one YACS base with the ImageNet mean/std agrees with d2reg.recipes (the LazyConfigs import it)."""
    cfg = yacs_cfg("common/Base-D2Reg.yaml")
    assert tuple(cfg.MODEL.PIXEL_MEAN) == IMAGENET_MEAN and tuple(cfg.MODEL.PIXEL_STD) == IMAGENET_STD
    assert cfg.INPUT.FORMAT == "RGB"
    for rel in YAML_CONFIGS:
        if yacs_cfg(rel).MODEL.BACKBONE.NAME.startswith("build_d2reg"):
            assert tuple(yacs_cfg(rel).MODEL.PIXEL_MEAN) == IMAGENET_MEAN, rel


def test_register_switch_and_default_weights(tmp_path, monkeypatch, write_ckpt):
    """Default weights are $D2REG_CHECKPOINTS/<official name> (read when the model is built); a missing
    file is a clear error; num_register_tokens=0 takes the register-free file and the legacy position
    interpolation."""
    monkeypatch.setenv("D2REG_CHECKPOINTS", str(tmp_path))
    cfg = load_lazy("COCO/mask_rcnn_vit_s_100ep.py")
    shrink(cfg, weights=False)
    with pytest.raises(FileNotFoundError, match="dinov2_vits14_reg4_pretrain.pth"):
        instantiate(cfg.model.backbone)
    write_ckpt("dinov2_vits14_reg4_pretrain.pth", num_register_tokens=4, depth=4)
    write_ckpt("dinov2_vits14_pretrain.pth", num_register_tokens=0, depth=4)
    reg = instantiate(cfg.model.backbone).net
    assert reg.checkpoint_info.num_register_tokens == 4 and not reg.vit.legacy_pos_interp
    cfg = LazyConfig.apply_overrides(load_lazy("COCO/mask_rcnn_vit_s_100ep.py"), [NOREG])
    shrink(cfg, weights=False)
    assert instantiate(cfg.model.backbone.net.weights) == str(tmp_path / "dinov2_vits14_pretrain.pth")
    noreg = instantiate(cfg.model.backbone).net
    assert noreg.num_register_tokens == 0 and noreg.vit.reg_token is None and noreg.vit.legacy_pos_interp
    # the linear probe loads the same files at patch 14
    cfg = LazyConfig.apply_overrides(load_lazy("ADE20k/linear4_vit_s_40k.py"), ["model.backbone.num_register_tokens=0"])
    shrink(cfg, weights=False)
    probe = instantiate(cfg.model.backbone)
    assert probe.checkpoint_info.num_register_tokens == 0 and probe.patch_size == 14
