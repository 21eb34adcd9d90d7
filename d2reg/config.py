"""YACS support: ``add_d2reg_config`` and the ``build_d2reg_sfp_backbone`` builder."""
from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

__all__ = ["add_d2reg_config", "build_d2reg_sfp_backbone"]


def add_d2reg_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.D2REG.*`` (the :class:`d2reg.DINOv2Backbone` kwargs, upper-case) and
    ``cfg.MODEL.D2REG.SFP.*`` (the simple feature pyramid) to a detectron2 config, in place."""
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
    return cfg


@BACKBONE_REGISTRY.register()
def build_d2reg_sfp_backbone(cfg: CN, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: "build_d2reg_sfp_backbone"``: DINOv2Backbone inside a simple feature
    pyramid (p2-p6 with the default scale factors)."""
    from .modeling.pyramid import SimpleFeaturePyramid

    if input_shape.channels != 3:
        raise ValueError(f"DINOv2 backbones take 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}.")
    return SimpleFeaturePyramid(cfg)
