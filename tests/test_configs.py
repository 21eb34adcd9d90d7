"""Every shipped config loads and builds its model.

All ``configs/**/*.py`` (LazyConfig) and ``configs/**/*.yaml`` (YACS) are collected by glob, so files
added later are covered too. Full-size ViTs would take too long on a CPU: every DINOv2Backbone is
shrunk to a tiny ViT (32 wide, 4 blocks, 2 heads) and its weights file dropped before the model is
built; everything else (pyramid, heads, meta-architecture, optimizer, schedule, data mappers) is built
as configured. The every-config tests build on PyTorch's "meta" device (all constructors and shapes,
no weight initialisation: random-initialising the 12.8M-weight box-head FCs of ~50 configs dominated
the CPU time); a few configs are built on the CPU and run inference, the ViT-S recipe is built at
full size once, and the default checkpoint paths and the register switch are exercised with tiny
checkpoints on disk.
configs/detrex needs detrex (not on PyPI): those files are skipped here when it is missing
(tests/test_detrex_configs.py covers them).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig

from d2reg import DINOv2Backbone, add_d2reg_config

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
    for needed in ("COCO/mask_rcnn_vit_s_100ep.yaml", "ADE20k/linear4_vit_l_40k_noreg.yaml"):
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


def yacs_cfg(rel: str, *opts):
    """A YACS config as tools/train_net.py reads it (d2reg's training keys when available)."""
    cfg = get_cfg()
    add_d2reg_config(cfg)
    cfg.merge_from_file(str(CONFIGS / rel))
    cfg.merge_from_list(list(opts))
    return cfg


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
                bases.add((Path(rel).parent / base).as_posix())
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


@pytest.mark.parametrize("rel", ["COCO/mask_rcnn_vit_s_100ep.py", "COCO/cascade_mask_rcnn_vit_b_100ep_noreg.py"])
def test_lazyconfig_instance_seg_inference(rel):
    cfg = load_lazy(rel)
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
    cfg = yacs_cfg("COCO/cascade_mask_rcnn_vit_s_100ep.yaml", *TINY_YACS, *FEW_PROPOSALS_YACS,
                   "MODEL.D2REG.SFP.SQUARE_PAD", 256)
    model = build_model(cfg).eval()
    sizes = [(100, 90)]
    with torch.no_grad():
        _check_instances(model(image_batch(sizes)), sizes)


@pytest.mark.parametrize("rel", ["ADE20k/linear4_vit_s_40k.py", "ADE20k/sem_fpn_vit_l_80k.py",
                                 "ADE20k/linear_vit_g_40k_noreg.yaml", "ADE20k/sem_fpn_vit_s_80k.yaml"])
def test_sem_seg_inference(rel):
    if rel.endswith(".yaml"):
        model = build_model(yacs_cfg(rel, *TINY_YACS))
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
    assert cfg.model.backbone.net.weights.endswith("dinov2_vits14_reg4_pretrain.pth")
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


def _recipe_of_lazy(cfg):
    net = cfg.model.backbone.net if "net" in cfg.model.backbone else cfg.model.backbone
    f = cfg.optimizer.params.get("lr_factor_func")
    return dict(arch=net.arch, registers=net.num_register_tokens, patch=net.patch_size,
                drop_path=net.get("drop_path_rate", 0.0), decay=f.keywords["lr_decay_rate"] if f else 1.0,
                weights=os.path.basename(net.weights), lr=cfg.optimizer.lr, wd=cfg.optimizer.weight_decay,
                freeze=net.get("freeze_at", 0) in ("all", -1), out_indices=tuple(net.get("out_indices", (-1,))))


def _recipe_of_yacs(cfg):
    c = cfg.MODEL.D2REG
    return dict(arch=c.ARCH, registers=c.NUM_REGISTER_TOKENS, patch=c.PATCH_SIZE, drop_path=c.DROP_PATH_RATE,
                decay=c.LR_DECAY, weights=os.path.basename(c.WEIGHTS), lr=cfg.SOLVER.BASE_LR,
                wd=cfg.SOLVER.WEIGHT_DECAY, freeze=c.FREEZE_AT == -1, out_indices=tuple(c.OUT_INDICES))


PAIRS = sorted(p[:-3] for p in PY_CONFIGS if p.startswith(("COCO/", "ADE20k/")) and p[:-3] + ".yaml" in YAML_CONFIGS)


@pytest.mark.parametrize("stem", PAIRS)
def test_yacs_and_lazyconfig_agree(stem):
    """Where a config exists in both systems, the backbone recipe is the same."""
    assert len(PAIRS) >= 40
    lazy = _recipe_of_lazy(load_lazy(stem + ".py"))
    yacs = _recipe_of_yacs(yacs_cfg(stem + ".yaml"))
    norm = {k: round(float(v), 9) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in lazy.items()}
    assert norm == {k: round(float(v), 9) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                    for k, v in yacs.items()}, stem


def test_register_switch_and_default_weights(tmp_path, monkeypatch, write_ckpt):
    """Default weights are $D2REG_CHECKPOINTS/<official name>; a missing file is a clear error; the
    *_noreg configs take the register-free file and use the legacy position interpolation."""
    monkeypatch.setenv("D2REG_CHECKPOINTS", str(tmp_path))
    cfg = load_lazy("COCO/mask_rcnn_vit_s_100ep.py")
    shrink(cfg, weights=False)
    with pytest.raises(FileNotFoundError, match="dinov2_vits14_reg4_pretrain.pth"):
        instantiate(cfg.model.backbone)
    write_ckpt("dinov2_vits14_reg4_pretrain.pth", num_register_tokens=4, depth=4)
    write_ckpt("dinov2_vits14_pretrain.pth", num_register_tokens=0, depth=4)
    reg = instantiate(cfg.model.backbone).net
    assert reg.checkpoint_info.num_register_tokens == 4 and not reg.vit.legacy_pos_interp
    cfg = load_lazy("COCO/mask_rcnn_vit_s_100ep_noreg.py")
    shrink(cfg, weights=False)
    assert cfg.model.backbone.net.weights == str(tmp_path / "dinov2_vits14_pretrain.pth")
    noreg = instantiate(cfg.model.backbone).net
    assert noreg.num_register_tokens == 0 and noreg.vit.reg_token is None and noreg.vit.legacy_pos_interp
    # the linear probe loads the same files at patch 14
    cfg = load_lazy("ADE20k/linear4_vit_s_40k_noreg.py")
    shrink(cfg, weights=False)
    probe = instantiate(cfg.model.backbone)
    assert probe.checkpoint_info.num_register_tokens == 0 and probe.patch_size == 14
