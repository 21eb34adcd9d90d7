"""detectron2's ViTDet ``SimpleFeaturePyramid`` with its padding contract fixed."""
from __future__ import annotations

import math
from typing import Dict, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import vit as d2_vit
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .families import vit_backbone_from_config

__all__ = ["SimpleFeaturePyramid", "build_d2reg_sfp_backbone"]


class SimpleFeaturePyramid(d2_vit.SimpleFeaturePyramid):
    """detectron2's ``SimpleFeaturePyramid`` (same arguments, same weights and outputs) with:

    - ``padding_constraints`` under the key ``"size_divisibility"``: upstream returns the misspelt
      ``"size_divisiblity"`` and never sets ``size_divisibility``, so ``ImageList`` pads nothing
      unless ``square_pad > 0`` and odd-sized images break the 0.5x level / top block alignment.
    - a clear error when the input stride cannot make a power-of-two pyramid (patch 14).
    - ``LastLevelMaxPool`` pools the coarsest level whatever its name (upstream reads "p5" only, so
      e.g. patch 8 with scale factors (2, 1, 0.5), levels p2-p4, failed with an IndexError).
    - ``from_config`` for YACS (``MODEL.D2REG.*``), so one class serves kwargs, YACS and LazyCall.
    """

    @configurable
    def __init__(self, net, in_feature: str, out_channels: int, scale_factors: Sequence[float],
                 top_block=None, norm: str = "LN", square_pad: int = 0):
        stride = net.output_shape()[in_feature].stride
        strides = [stride / s for s in scale_factors]
        if len(scale_factors) > 1 and not all(s.is_integer() and math.log2(s).is_integer() for s in strides):
            raise ValueError(
                f"SimpleFeaturePyramid needs power-of-two strides, but input stride {stride} with scale "
                f"factors {tuple(scale_factors)} gives {strides}. With a DINOv2 patch-14 checkpoint use "
                "patch_size=16 (the kernel is resampled, MODEL.D2REG.PATCH_SIZE 16), or scale_factors=(1.0,)."
            )
        levels = [f"p{int(math.log2(s))}" for s in strides]
        if isinstance(top_block, LastLevelMaxPool):
            top_block.in_feature = levels[-1]  # upstream hard-codes "p5"; it pools the coarsest level
        elif top_block is not None and getattr(top_block, "in_feature", levels[-1]) not in levels:
            raise ValueError(f"top_block reads {top_block.in_feature!r}, but the pyramid's levels are {levels}.")
        super().__init__(net, in_feature, out_channels, list(scale_factors), top_block, norm, square_pad)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.D2REG.SFP
        return dict(
            net=vit_backbone_from_config(cfg),
            in_feature="last_feat",
            out_channels=c.OUT_CHANNELS,
            scale_factors=tuple(c.SCALE_FACTORS),
            top_block=LastLevelMaxPool() if c.TOP_BLOCK else None,
            norm=c.NORM,
            square_pad=c.SQUARE_PAD,
        )

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


@BACKBONE_REGISTRY.register()
def build_d2reg_sfp_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """``MODEL.BACKBONE.NAME: "build_d2reg_sfp_backbone"``: the d2reg ViT (``MODEL.D2REG.*``) inside
    a simple feature pyramid (p2-p6 with the default ``MODEL.D2REG.SFP.*``)."""
    if input_shape.channels != 3:
        raise ValueError(f"d2reg ViT backbones take 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}.")
    return SimpleFeaturePyramid(cfg)
