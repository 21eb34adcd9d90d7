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
``num_register_tokens`` overrides in both config systems, for either family: a config whose name
contains ``dinov3`` must build a DINOv3Backbone (and take the DINOv3 rows), every other one a DINOv2Backbone.
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

from d2reg import DINOv2Backbone, DINOv3Backbone, ViTBackbone, add_d2reg_config
from d2reg.config import resolve_recipe
from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES, backbone_family, get_recipe, official_checkpoint
from d2reg.vit import DINOV3_ARCHS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PY_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
YAML_CONFIGS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
TINY = dict(embed_dim=32, depth=4, num_heads=2, pretrain_img_size=224)
TINY3 = dict(embed_dim=32, depth=4, num_heads=2)  # DINOv3: no position table, so no pretrain size
TINY_YACS = ["MODEL.D2REG.EMBED_DIM", 32, "MODEL.D2REG.DEPTH", 4, "MODEL.D2REG.NUM_HEADS", 2,
             "MODEL.D2REG.PRETRAIN_IMG_SIZE", 224, "MODEL.D2REG.WEIGHTS", "", "MODEL.WEIGHTS", "",
             "MODEL.DEVICE", "cpu"]
# inference on random weights: few proposals, so the 4conv box heads stay cheap on a CPU
FEW_PROPOSALS_YACS = ["MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 16]
HAS_DETREX = importlib.util.find_spec("detrex") is not None
BACKBONE_NAMES = {"d2reg.DINOv2Backbone", "d2reg.modeling.DINOv2Backbone", "d2reg.modeling.backbone.DINOv2Backbone",
                  "d2reg.DINOv3Backbone", "d2reg.modeling.DINOv3Backbone",
                  "d2reg.modeling.dinov3_backbone.DINOv3Backbone"}


def family_class(rel: str):
    """The backbone class a shipped config must build: DINOv3 iff its name says so."""
    return DINOv3Backbone if "dinov3" in rel else DINOv2Backbone


def test_configs_are_found():
    for needed in ("COCO/mask_rcnn_vit_s_100ep.py", "COCO/cascade_mask_rcnn_vit_l_100ep.py",
                   "ADE20k/linear_vit_b_40k.py", "ADE20k/sem_fpn_vit_g_80k.py"):
        assert needed in PY_CONFIGS
    for needed in ("COCO/mask_rcnn_vit_b_100ep.yaml", "ADE20k/linear4_vit_b_40k.yaml"):
        assert needed in YAML_CONFIGS
    # DINOv3: every task at S/B/L, H+ where fine-tuning fits, the 7B frozen probe; one YACS file per task
    for task, suffix in (("COCO/mask_rcnn", "100ep"), ("COCO/cascade_mask_rcnn", "100ep"),
                         ("ADE20k/linear", "40k"), ("ADE20k/sem_fpn", "80k")):
        for size in ("s", "b", "l"):
            assert f"{task}_dinov3_vit_{size}_{suffix}.py" in PY_CONFIGS
        assert f"{task}_dinov3_vit_b_{suffix}.yaml" in YAML_CONFIGS
    for size in ("small", "base", "large"):
        assert f"detrex/dino_d2reg_dinov3_vit_{size}_4scale_12ep.py" in PY_CONFIGS
    for rel in ("COCO/mask_rcnn_dinov3_vit_hplus_100ep.py", "COCO/cascade_mask_rcnn_dinov3_vit_hplus_100ep.py",
                "ADE20k/sem_fpn_dinov3_vit_hplus_80k.py", "ADE20k/linear_dinov3_vit_7b_40k.py"):
        assert rel in PY_CONFIGS
    # frozen multi-layer recipes: ViT-L of both families (+ ViT-g) and one YACS file per task and family
    for stem in ("COCO/mask_rcnn_vit_l_frozen_100ep", "COCO/mask_rcnn_dinov3_vit_l_frozen_100ep",
                 "ADE20k/sem_fpn_vit_l_frozen_80k", "ADE20k/sem_fpn_dinov3_vit_l_frozen_80k"):
        assert f"{stem}.py" in PY_CONFIGS and f"{stem}.yaml" in YAML_CONFIGS
    assert {"COCO/mask_rcnn_vit_g_frozen_100ep.py", "COCO/mask_rcnn_dinov3_vit_7b_frozen_100ep.py"} <= set(PY_CONFIGS)


# ---------------------------------------------------------------- helpers
def _is_backbone(node) -> bool:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return target in (DINOv2Backbone, DINOv3Backbone) or (isinstance(target, str) and target in BACKBONE_NAMES)


def _backbone_nodes(node):
    """Every LazyCall(DINOv2Backbone / DINOv3Backbone) node in a config tree."""
    if isinstance(node, DictConfig):
        if _is_backbone(node):
            yield node
        for v in node.values():
            yield from _backbone_nodes(v)
    elif isinstance(node, ListConfig):
        for v in node:
            yield from _backbone_nodes(v)


def shrink(cfg, weights=True) -> list:
    """Tiny ViT in every family backbone of ``cfg.model`` (and weights dropped unless ``weights=False``)."""
    nets = list(_backbone_nodes(cfg.model))
    for net in nets:
        net.update(TINY3 if "DINOv3" in str(net._target_) else TINY)
        if weights:
            net.weights = None
    if "num_blocks" in cfg.model:  # EoMT: its query blocks (up to 5 for ViT-g) within the tiny ViT's 4
        cfg.model.num_blocks = 2
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
    opt = None
    with torch.device("meta"):
        model = instantiate(cfg.model)
        assert isinstance(model, torch.nn.Module)
        if nets:
            backbones = [m for m in model.modules() if isinstance(m, ViTBackbone)]
            assert backbones and all(type(m) is family_class(rel) for m in backbones), rel
        if "optimizer" in cfg:  # layer decay / overrides resolve against the real parameter names
            cfg.optimizer.params.model = model
            opt = instantiate(cfg.optimizer)
            n_trainable = sum(p.requires_grad for p in model.parameters())
            assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    if "lr_multiplier" in cfg and "optimizer" in cfg.lr_multiplier:  # a torch scheduler (EoMT's) of the optimizer
        cfg.lr_multiplier.optimizer = opt
        sched = instantiate(cfg.lr_multiplier)
        assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
        assert all(lr == 0.0 for lr in sched.get_last_lr())  # both warm-ups start at 0
    elif "lr_multiplier" in cfg:
        sched = instantiate(cfg.lr_multiplier)
        assert 0 <= sched(0.0) <= 1 and 0 <= sched(0.5) <= 1
    for hook in cfg.get("train", {}).get("extra_hooks", []):  # e.g. EoMT's mask annealing: windows per query block
        built = instantiate(hook)
        assert len(built.starts) == model.num_blocks and max(built.ends) <= cfg.train.max_iter
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
    assert cfg.MODEL.D2REG.FAMILY == ("dinov3" if "dinov3" in rel else "dinov2")
    with torch.device("meta"):
        model = build_model(cfg)
    backbones = [m for m in model.modules() if isinstance(m, ViTBackbone)]
    assert backbones and all(type(m) is family_class(rel) for m in backbones), rel


# ---------------------------------------------------------------- inference through a few configs
def _check_instances(outputs, sizes):
    assert len(outputs) == len(sizes)
    for out, (h, w) in zip(outputs, sizes):
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())


NOREG = "model.backbone.net.num_register_tokens=0"


@pytest.mark.parametrize("rel, overrides", [("COCO/mask_rcnn_vit_s_100ep.py", []),
                                             ("COCO/cascade_mask_rcnn_vit_b_100ep.py", [NOREG]),
                                             ("COCO/mask_rcnn_dinov3_vit_s_100ep.py", [])])
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


@pytest.mark.parametrize("rel", ["COCO/cascade_mask_rcnn_vit_b_100ep.yaml",
                                 "COCO/cascade_mask_rcnn_dinov3_vit_b_100ep.yaml"])
def test_yacs_instance_seg_inference(rel):
    cfg = yacs_cfg(rel, *TINY_YACS, *FEW_PROPOSALS_YACS,
                   "MODEL.D2REG.SFP.SQUARE_PAD", 256, "MODEL.D2REG.ARCH", "vit_small")
    model = build_model(cfg).eval()
    assert isinstance(model.backbone.net, family_class(rel))
    sizes = [(100, 90)]
    with torch.no_grad():
        _check_instances(model(image_batch(sizes)), sizes)


@pytest.mark.parametrize("rel", ["ADE20k/linear4_vit_s_40k.py", "ADE20k/sem_fpn_vit_l_80k.py",
                                 "ADE20k/linear_vit_b_40k.yaml", "ADE20k/sem_fpn_vit_b_80k.yaml",
                                 "ADE20k/linear_dinov3_vit_l_40k.py", "ADE20k/sem_fpn_dinov3_vit_s_80k.py",
                                 "ADE20k/linear_dinov3_vit_b_40k.yaml", "ADE20k/sem_fpn_dinov3_vit_b_80k.yaml"])
def test_sem_seg_inference(rel):
    if rel.endswith(".yaml"):
        opts = (("MODEL.D2REG.ARCH", "vit_small_plus") if "dinov3" in rel else
                ("MODEL.D2REG.ARCH", "vit_giant2", "MODEL.D2REG.NUM_REGISTER_TOKENS", 0))
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


# one config per task, system and family; every other size / register setting is an override of these
TASKS = {
    "dinov2": [("COCO/mask_rcnn_vit_b_100ep", "model.backbone.net"),
               ("COCO/cascade_mask_rcnn_vit_b_100ep", "model.backbone.net"),
               ("ADE20k/sem_fpn_vit_b_80k", "model.backbone.net"),
               ("ADE20k/linear_vit_b_40k", "model.backbone"),
               ("ADE20k/linear4_vit_b_40k", "model.backbone")],
    "dinov3": [("COCO/mask_rcnn_dinov3_vit_b_100ep", "model.backbone.net"),
               ("COCO/cascade_mask_rcnn_dinov3_vit_b_100ep", "model.backbone.net"),
               ("ADE20k/sem_fpn_dinov3_vit_b_80k", "model.backbone.net"),
               ("ADE20k/linear_dinov3_vit_b_40k", "model.backbone")],
}
# DINOv3 models always have 4 storage tokens: no register switch
RECIPE_CASES = [(f, a, r) for f, a in sorted(RECIPES) for r in ((4, 0) if f == "dinov2" else (4,))]


@pytest.mark.parametrize("family, arch, registers", RECIPE_CASES)
def test_recipe_follows_arch_and_registers(family, arch, registers):
    """A command-line override of arch / registers moves weights, drop path and layer decay together,
    in the LazyConfig and in the YACS config (resolve_recipe) alike: both read d2reg.recipes, the row
    of the config's family."""
    row = RECIPES[(family, arch)]
    for stem, net in TASKS[family]:
        overrides = [f"{net}.arch={arch}"] + ([f"{net}.num_register_tokens={registers}"] if family == "dinov2" else [])
        lazy = LazyConfig.apply_overrides(copy.deepcopy(_loaded(stem + ".py")), overrides)
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


# ---------------------------------------------------------------- DINOv3
DINOV3_FILES = {  # facebookresearch/dinov3, dinov3/hub/backbones.py (LVD-1689M weights, default hashes)
    "vit_small": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "vit_small_plus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "vit_base": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    "vit_large": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    "vit_huge_plus": "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
    "vit_7b": "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth",
}


def test_dinov3_recipe_rows():
    """One row per DINOv3 arch the backbone knows, with the official file name; sizes in order."""
    rows = {a: r for (f, a), r in RECIPES.items() if f == "dinov3"}
    assert set(rows) == set(DINOV3_ARCHS) == set(DINOV3_FILES)
    for arch, name in DINOV3_FILES.items():
        assert official_checkpoint(arch, family="dinov3", root="/ckpt") == f"/ckpt/{name}"
        assert official_checkpoint(arch, 0, family="dinov3", root="/ckpt") == f"/ckpt/{name}"  # no register variant
    order = ["vit_small", "vit_small_plus", "vit_base", "vit_large", "vit_huge_plus", "vit_7b"]
    drops = [rows[a].drop_path for a in order]
    assert drops == sorted(drops) and drops[0] == 0.1 and drops[-1] == 0.5
    # S/B/L as the DINOv2 rows of the same depth; deeper models: the patch embedding's multiplier ~ ViT-L's
    for arch in ("vit_small", "vit_base", "vit_large"):
        assert rows[arch] == RECIPES[("dinov2", arch)]._replace(checkpoint=rows[arch].checkpoint)
    target = rows["vit_large"].layer_decay ** (DINOV3_ARCHS["vit_large"].depth + 1)
    for arch in ("vit_huge_plus", "vit_7b"):
        assert rows[arch].layer_decay ** (DINOV3_ARCHS[arch].depth + 1) == pytest.approx(target, rel=0.1)
    with pytest.raises(KeyError, match="no recipe for dinov3/vit_giant2"):
        get_recipe("vit_giant2", "dinov3")


def test_backbone_family_from_target():
    assert backbone_family(DINOv3Backbone) == "dinov3" and backbone_family(DINOv2Backbone) == "dinov2"
    assert backbone_family("d2reg.modeling.dinov3_backbone.DINOv3Backbone") == "dinov3"  # saved/loaded config
    assert backbone_family("dinov3") == "dinov3"
    with pytest.raises(ValueError, match="no d2reg family backbone"):
        backbone_family(torch.nn.Linear)


def test_family_switch_is_the_backbone_node():
    """Putting dinov3_vit(...) in a DINOv2 config moves weights, drop path and the optimizer's layer
    decay to the DINOv3 row (the layer decay reads the family from the backbone's _target_)."""
    cfg = copy.deepcopy(_loaded("COCO/mask_rcnn_vit_b_100ep.py"))
    cfg.model.backbone.net = LazyConfig.load(str(CONFIGS / "COCO/mask_rcnn_dinov3_vit_b_100ep.py")).model.backbone.net
    cfg = LazyConfig.apply_overrides(cfg, ["model.backbone.net.arch=vit_small_plus"])  # a DINOv3-only size
    row = RECIPES[("dinov3", "vit_small_plus")]
    assert _lazy_recipe(cfg) == pytest.approx((official_checkpoint("vit_small_plus", family="dinov3"),
                                               row.drop_path, row.layer_decay))


def test_full_size_dinov3_vit_s_mask_rcnn_and_its_optimizer():
    """DINOv3 ViT-S Mask R-CNN at its real size (random init): the right ViT, drop path, and layer
    decay with the storage tokens at layer 0 and no weight decay on the prefix tokens."""
    cfg = load_lazy("COCO/mask_rcnn_dinov3_vit_s_100ep.py")
    assert instantiate(cfg.model.backbone.net.weights).endswith(DINOV3_FILES["vit_small"])
    cfg.model.backbone.net.weights = None
    model = instantiate(cfg.model)
    net = model.backbone.net
    assert isinstance(net, DINOv3Backbone)
    vit = net.vit
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(21.6e6, rel=0.03)
    assert len(vit.blocks) == 12 and vit.embed_dim == 384 and vit.reg_token.shape[1] == 4
    assert model.backbone.padding_constraints == {"size_divisibility": 32, "square_size": 1024}
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr, decay = 1e-4, RECIPES[("dinov3", "vit_small")].layer_decay
    for name in ("backbone.net.vit.patch_embed.proj.weight", "backbone.net.vit.reg_token",
                 "backbone.net.vit.cls_token"):
        assert groups[id(named[name])]["lr"] == pytest.approx(lr * decay ** 13), name
    assert groups[id(named["backbone.net.vit.blocks.11.attn.qkv.weight"])]["lr"] == pytest.approx(lr * decay)
    for name in ("backbone.net.vit.reg_token", "backbone.net.vit.cls_token"):
        assert groups[id(named[name])]["weight_decay"] == 0.0


def test_dinov3_large_models_memory_settings():
    """H+ fine-tunes with activation checkpointing; the 7B is only shipped frozen (linear probe): built
    at full size on the meta device, no ViT parameter trains and the optimizer sees the head only."""
    for rel in ("COCO/mask_rcnn_dinov3_vit_hplus_100ep.py", "COCO/cascade_mask_rcnn_dinov3_vit_hplus_100ep.py",
                "ADE20k/sem_fpn_dinov3_vit_hplus_80k.py"):
        net = load_lazy(rel).model.backbone.net
        assert net.arch == "vit_huge_plus" and net.use_act_checkpoint, rel
    cfg = load_lazy("ADE20k/linear_dinov3_vit_7b_40k.py")
    assert cfg.model.backbone.arch == "vit_7b" and cfg.model.backbone.freeze_at == "all"
    assert instantiate(cfg.model.backbone.weights).endswith(DINOV3_FILES["vit_7b"])
    cfg.model.backbone.weights = None
    with torch.device("meta"):
        model = instantiate(cfg.model)
    vit = model.backbone.vit
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(6.7e9, rel=0.03)
    assert not any(p.requires_grad for p in vit.parameters())
    assert model.sem_seg_head.in_channels == 4096
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) < 1e6
    assert opt.defaults["weight_decay"] == 1e-3  # the DINOv3 probe protocol


def test_dinov3_default_weights(tmp_path, monkeypatch):
    """Default DINOv3 weights: $D2REG_CHECKPOINTS/<official name>, a clear error when missing (LazyConfig
    and YACS), loaded through the checkpoint pipeline when present."""
    from dinov3_reference import random_official_dinov3_state_dict

    from d2reg.testing import write_checkpoint

    monkeypatch.setenv("D2REG_CHECKPOINTS", str(tmp_path))
    cfg = load_lazy("COCO/mask_rcnn_dinov3_vit_s_100ep.py")
    shrink(cfg, weights=False)
    with pytest.raises(FileNotFoundError, match=DINOV3_FILES["vit_small"]):
        instantiate(cfg.model.backbone)
    write_checkpoint(str(tmp_path / DINOV3_FILES["vit_small"]),
                     random_official_dinov3_state_dict("vit_small", seed=0, **TINY3))
    net = instantiate(cfg.model.backbone).net
    assert net.checkpoint_info.family == "dinov3"
    ycfg = yacs_cfg("ADE20k/linear_dinov3_vit_b_40k.yaml", "MODEL.D2REG.ARCH", "vit_small")
    assert ycfg.MODEL.D2REG.WEIGHTS == str(tmp_path / DINOV3_FILES["vit_small"])
    c = ycfg.MODEL.D2REG
    assert (c.PATCH_SIZE, c.NUM_REGISTER_TOKENS, ycfg.SOLVER.WEIGHT_DECAY) == (16, 4, 1e-3)
