"""``add_d2reg_config``: every YACS key d2reg adds to a detectron2 config (model and solver).

The YACS builders sit beside their classes: ``build_d2reg_sfp_backbone`` in
:mod:`d2reg.modeling.pyramid`, ``build_d2reg_vit_backbone`` in :mod:`d2reg.modeling.semseg`.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_d2reg_config"]


def add_d2reg_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.D2REG.*`` (the :class:`d2reg.DINOv2Backbone` kwargs, upper-case),
    ``cfg.MODEL.D2REG.SFP.*`` (the simple feature pyramid) and the solver keys detectron2 lacks
    (``SOLVER.OPTIMIZER`` "SGD" | "ADAMW", ``SOLVER.BETAS``) to a detectron2 config, in place.
    Idempotent: keys already present keep their values."""
    if "D2REG" in cfg.MODEL:
        return cfg
    cfg.MODEL.D2REG = CN()
    c = cfg.MODEL.D2REG
    c.ARCH = "vit_small"
    c.NUM_REGISTER_TOKENS = 4
    c.PATCH_SIZE = 16
    c.PATCH_RESIZE = "pi"
    c.WEIGHTS = ""  # local DINOv2 checkpoint (official / timm / HF layout); "" = random init
    c.OUT_INDICES = [-1]
    c.FINAL_NORM = False
    c.DROP_PATH_RATE = 0.0
    c.USE_ACT_CHECKPOINT = False
    c.FREEZE_AT = 0  # 0 none, 1 stem, k>1 stem + first k-1 blocks, -1 the whole ViT ("all")
    c.WINDOW_SIZE = 0
    c.WINDOW_BLOCK_INDEXES = []
    c.PRETRAIN_IMG_SIZE = 518
    c.EMBED_DIM = 0  # 0: the arch's value
    c.DEPTH = 0
    c.NUM_HEADS = 0
    c.LAYER_SCALE_INIT = 1e-5  # LayerScale gammas at random init (DINOv2's value); loaded weights replace it
    c.LR_DECAY = 1.0  # layer-wise lr decay, read by tools/train_net.py (1.0: off)
    c.SFP = CN()
    c.SFP.OUT_CHANNELS = 256
    c.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    c.SFP.TOP_BLOCK = True  # LastLevelMaxPool: p6
    c.SFP.NORM = "LN"
    c.SFP.SQUARE_PAD = 0
    if "OPTIMIZER" not in cfg.SOLVER:
        cfg.SOLVER.OPTIMIZER = "SGD"  # detectron2's behaviour; "ADAMW" for the ViTDet recipes
    if "BETAS" not in cfg.SOLVER:
        cfg.SOLVER.BETAS = (0.9, 0.999)  # AdamW betas
    return cfg
