"""``add_d2reg_config``: every YACS key d2reg adds to a detectron2 config (model and solver).

The YACS builders sit beside their classes: ``build_d2reg_sfp_backbone`` in
:mod:`d2reg.modeling.pyramid` (the simple or, with ``MODEL.D2REG.SFP.MULTILAYER_MODE``, the multi-layer
pyramid), ``build_d2reg_vit_backbone`` in :mod:`d2reg.modeling.semseg`.

``resolve_recipe``: the shipped YACS configs leave the per-size values to the recipe table
(:mod:`d2reg.recipes`) with ``MODEL.D2REG.WEIGHTS "official"``, ``DROP_PATH_RATE -1``, ``LR_DECAY -1``;
whatever builds a backbone or optimizer from a config resolves them through this one function.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from .data.eomt_mapper import add_eomt_input_config
from .recipes import (
    default_num_blocks,
    drop_path_rate,
    eomt_annealing_windows,
    eomt_max_iter,
    get_eomt_recipe,
    layer_decay,
    official_checkpoint,
)

__all__ = ["OFFICIAL_WEIGHTS", "add_d2reg_config", "resolve_recipe"]

# MODEL.D2REG.WEIGHTS value meaning "the official checkpoint of FAMILY/ARCH/NUM_REGISTER_TOKENS under
# $D2REG_CHECKPOINTS" (d2reg.recipes.official_checkpoint)
OFFICIAL_WEIGHTS = "official"


def add_d2reg_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.D2REG.*`` (the :class:`d2reg.DINOv2Backbone` kwargs, upper-case),
    ``cfg.MODEL.D2REG.SFP.*`` (the simple feature pyramid) and the solver keys detectron2 lacks
    (``SOLVER.OPTIMIZER`` "SGD" | "ADAMW", ``SOLVER.BETAS``) to a detectron2 config, in place.
    Idempotent: keys already present keep their values."""
    if "D2REG" in cfg.MODEL:
        return cfg
    cfg.MODEL.D2REG = CN()
    c = cfg.MODEL.D2REG
    c.FAMILY = "dinov2"  # "dinov2" (DINOv2Backbone) | "dinov3" (DINOv3Backbone)
    c.ARCH = "vit_small"
    c.NUM_REGISTER_TOKENS = 4
    c.PATCH_SIZE = 16
    c.PATCH_RESIZE = "pi"
    # local checkpoint (official / timm / HF layout); "" = random init; "official" = the recipe's file
    c.WEIGHTS = ""
    c.OUT_INDICES = [-1]
    c.FINAL_NORM = False
    c.DROP_PATH_RATE = 0.0  # < 0: the recipe's value for ARCH
    c.USE_ACT_CHECKPOINT = False
    c.FREEZE_AT = 0  # 0 none, 1 stem, k>1 stem + first k-1 blocks, -1 the whole ViT ("all")
    c.WINDOW_SIZE = 0
    c.WINDOW_BLOCK_INDEXES = []
    c.PRETRAIN_IMG_SIZE = 518
    c.EMBED_DIM = 0  # 0: the arch's value
    c.DEPTH = 0
    c.NUM_HEADS = 0
    c.LAYER_SCALE_INIT = 1e-5  # LayerScale gammas at random init (DINOv2's value); loaded weights replace it
    c.LR_DECAY = 1.0  # layer-wise lr decay (1.0: off; < 0: the recipe's value for ARCH)
    # ---- frozen backbone and LoRA (issue 14: d2reg.modeling.vit_backbone, d2reg.modeling.lora) ----
    c.FROZEN_DTYPE = "float32"  # FREEZE_AT -1 only: "bfloat16" casts and runs the frozen ViT in bf16
    c.SAVE_FROZEN = True  # False: checkpoints omit the frozen ViT tensors (reloaded from WEIGHTS)
    c.LORA = CN()
    c.LORA.RANK = 0  # 0: no LoRA; > 0: LoRA of this rank on TARGETS of BLOCKS, the rest of the ViT frozen
    c.LORA.ALPHA = 16.0
    c.LORA.DROPOUT = 0.0
    c.LORA.BLOCKS = []  # [] every kept block; negative indexes count from the end
    c.LORA.TARGETS = ["qkv", "proj"]  # of "qkv", "proj", "fc1", "fc2"
    # ---- end of the frozen backbone / LoRA block ----
    c.SFP = CN()
    c.SFP.OUT_CHANNELS = 256
    c.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    c.SFP.TOP_BLOCK = True  # LastLevelMaxPool: p6
    c.SFP.NORM = "LN"
    c.SFP.SQUARE_PAD = 0
    # --- multi-layer pyramid (d2reg.MultiLayerFeaturePyramid, built by build_d2reg_sfp_backbone) ---
    c.SFP.MULTILAYER_MODE = ""  # "": one block (SimpleFeaturePyramid) | "concat" | "per_level"
    c.SFP.IN_BLOCKS = []  # the blocks it reads (OUT_INDICES stays [-1]); []: evenly spaced, m*depth/4 - 1
    c.SFP.BLOCK_NORM = "ln"  # "ln" (a LayerNorm per block) | "final" (the ViT's, FINAL_NORM True) | "none"
    c.SFP.PROJECT = False  # concat: 1x1 conv from k*C down to C before the branches (wide ViTs)
    # --- end multi-layer pyramid ---
    _add_eomt_config(cfg)
    if "OPTIMIZER" not in cfg.SOLVER:
        cfg.SOLVER.OPTIMIZER = "SGD"  # detectron2's behaviour; "ADAMW" for the ViTDet recipes
    if "BETAS" not in cfg.SOLVER:
        cfg.SOLVER.BETAS = (0.9, 0.999)  # AdamW betas
    return cfg


def _add_eomt_config(cfg: CN) -> None:
    """``cfg.MODEL.EOMT.*``: the :class:`d2reg.EoMT` kwargs (``META_ARCHITECTURE "EoMT"``; the backbone
    comes from ``MODEL.D2REG.*``), its mask annealing and ``cfg.SOLVER.EOMT.*`` (two-stage warm-up, poly
    schedule). Values 0 / -1 / [] are the official recipe's (:data:`d2reg.recipes.EOMT_RECIPES`, by
    ``MODEL.D2REG.FAMILY`` and the task: "semantic" -> ADE20k's, else COCO's), resolved by
    :func:`resolve_recipe`; so are ``SOLVER.BASE_LR`` / ``SOLVER.MAX_ITER`` / ``MODEL.D2REG.LR_DECAY`` -1."""
    cfg.MODEL.EOMT = e = CN()
    e.TASK = "panoptic"  # "panoptic" | "instance" | "semantic"
    e.NUM_CLASSES = 133
    e.NUM_QUERIES = 0  # 0: the recipe's (200 COCO, 100 ADE20k)
    e.NUM_BLOCKS = 0  # the query blocks; 0: EoMT's value for ARCH (3 S/B, 4 L, 5 g)
    e.INPUT_SIZE = 0  # inference: resize + pad square (panoptic, instance) / window side (semantic); 0: recipe's
    e.MASKED_ATTN = True
    e.ANNEAL = CN()
    e.ANNEAL.ENABLED = True
    e.ANNEAL.STARTS = []  # per query block, iterations; []: the recipe's windows scaled to SOLVER.MAX_ITER
    e.ANNEAL.ENDS = []
    e.ANNEAL.POWER = 0.9
    e.LOSS = CN()
    e.LOSS.CLASS_WEIGHT = 2.0
    e.LOSS.MASK_WEIGHT = 5.0
    e.LOSS.DICE_WEIGHT = 5.0
    e.LOSS.NO_OBJECT_WEIGHT = 0.1
    e.LOSS.NUM_POINTS = 12544
    e.LOSS.OVERSAMPLE_RATIO = 3.0
    e.LOSS.IMPORTANCE_SAMPLE_RATIO = 0.75
    e.TEST = CN()
    e.TEST.OBJECT_MASK_THRESHOLD = 0.8
    e.TEST.OVERLAP_THRESHOLD = 0.8
    e.TEST.TOPK = 100
    cfg.SOLVER.EOMT = CN()
    cfg.SOLVER.EOMT.WARMUP_ITERS = []  # (heads, then the ViT); []: the recipe's (500, 1000) / DINOv3 (2000, 3000)
    cfg.SOLVER.EOMT.POLY_POWER = 0.9
    cfg.SOLVER.EOMT.EPOCHS = 0.0  # with SOLVER.MAX_ITER -1: the schedule in epochs; 0: the recipe's (12 COCO)
    add_eomt_input_config(cfg)  # INPUT.IMAGE_SIZE (the training crop), MIN_SCALE, MAX_SCALE, COLOR_AUG_SSD
    cfg.INPUT.IMAGE_SIZE = 0  # 0: MODEL.EOMT.INPUT_SIZE (resolved)


def resolve_recipe(cfg: CN) -> CN:
    """``cfg`` with the recipe placeholders of ``MODEL.D2REG`` replaced from :mod:`d2reg.recipes`
    (by ``FAMILY``, ``ARCH``, ``NUM_REGISTER_TOKENS``): ``WEIGHTS "official"`` -> the official
    checkpoint path, ``DROP_PATH_RATE < 0`` and ``LR_DECAY < 0`` -> the table's values.
    ``FAMILY "dinov3"`` takes the DINOv3 rows (``NUM_REGISTER_TOKENS`` plays no part in their file
    names: DINOv3 always has 4 storage tokens), so any shipped YACS config becomes its DINOv3 version
    with ``MODEL.D2REG.FAMILY dinov3`` (+ ``PATCH_SIZE 16`` for the patch-14 linear probes); the
    ``*_dinov3_*.yaml`` files are exactly that (the linear probe also takes DINOv3's weight decay 1e-3).

    ``cfg`` itself is not modified (it may be frozen): a resolved clone is returned, or ``cfg`` when
    nothing is left to resolve. Idempotent."""
    c = cfg.MODEL.D2REG
    family = c.get("FAMILY", "dinov2")
    resolved = {}
    if c.WEIGHTS == OFFICIAL_WEIGHTS:
        resolved["MODEL.D2REG.WEIGHTS"] = official_checkpoint(c.ARCH, c.NUM_REGISTER_TOKENS, family)
    if c.DROP_PATH_RATE < 0:
        resolved["MODEL.D2REG.DROP_PATH_RATE"] = drop_path_rate(c.ARCH, family)
    eomt = cfg.MODEL.META_ARCHITECTURE == "EoMT"
    if c.LR_DECAY < 0:
        resolved["MODEL.D2REG.LR_DECAY"] = (get_eomt_recipe(family, eomt_dataset(cfg)).llrd if eomt
                                            else layer_decay(c.ARCH, family))
    if eomt:
        resolved.update(_resolve_eomt(cfg, family))
    if not resolved:
        return cfg
    out = cfg.clone()
    out.defrost()
    for key, value in resolved.items():
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node[part]
        node[leaf] = value
    if cfg.is_frozen():
        out.freeze()
    return out


def eomt_dataset(cfg: CN) -> str:
    """The recipe data set of an EoMT config: "ade20k" for ``MODEL.EOMT.TASK semantic``, else "coco"."""
    return "ade20k" if cfg.MODEL.EOMT.TASK == "semantic" else "coco"


def _resolve_eomt(cfg: CN, family: str) -> dict:
    """The EoMT placeholders (see :func:`_add_eomt_config`) -> the recipe's values, as full key names."""
    e, s = cfg.MODEL.EOMT, cfg.SOLVER
    r = get_eomt_recipe(family, eomt_dataset(cfg))
    out = {}
    if e.NUM_QUERIES <= 0:
        out["MODEL.EOMT.NUM_QUERIES"] = r.num_queries
    if e.INPUT_SIZE <= 0:
        out["MODEL.EOMT.INPUT_SIZE"] = r.input_size
    if cfg.INPUT.IMAGE_SIZE in (0, [0], (0,)):
        out["INPUT.IMAGE_SIZE"] = e.INPUT_SIZE if e.INPUT_SIZE > 0 else r.input_size
    if s.BASE_LR < 0:
        out["SOLVER.BASE_LR"] = r.lr
    epochs = s.EOMT.EPOCHS if s.EOMT.EPOCHS > 0 else None
    max_iter = s.MAX_ITER if s.MAX_ITER > 0 else eomt_max_iter(family, eomt_dataset(cfg), s.IMS_PER_BATCH, epochs)
    if s.MAX_ITER <= 0:
        out["SOLVER.MAX_ITER"] = max_iter
    warmup = list(s.EOMT.WARMUP_ITERS) or list(r.warmup_iters)
    if not s.EOMT.WARMUP_ITERS:
        out["SOLVER.EOMT.WARMUP_ITERS"] = warmup
    if e.ANNEAL.ENABLED and not e.ANNEAL.STARTS:
        blocks = e.NUM_BLOCKS if e.NUM_BLOCKS > 0 else default_num_blocks(cfg.MODEL.D2REG.ARCH)
        starts, ends = eomt_annealing_windows(blocks, max_iter, family, eomt_dataset(cfg), warmup[1])
        out["MODEL.EOMT.ANNEAL.STARTS"], out["MODEL.EOMT.ANNEAL.ENDS"] = starts, ends
    return out
