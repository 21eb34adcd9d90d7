"""The family backbones by name: what ``MODEL.D2REG.FAMILY`` selects in YACS."""
from __future__ import annotations

from typing import Dict, Type

from .backbone import DINOv2Backbone
from .dinov3_backbone import DINOv3Backbone
from .vit_backbone import ViTBackbone

__all__ = ["BACKBONE_FAMILIES", "vit_backbone_from_config"]

BACKBONE_FAMILIES: Dict[str, Type[ViTBackbone]] = {"dinov2": DINOv2Backbone, "dinov3": DINOv3Backbone}


def vit_backbone_from_config(cfg) -> ViTBackbone:
    """The backbone of ``cfg.MODEL.D2REG.FAMILY`` ("dinov2" default, "dinov3"), built from ``MODEL.D2REG.*``."""
    family = cfg.MODEL.D2REG.get("FAMILY", "dinov2")
    if family not in BACKBONE_FAMILIES:
        raise ValueError(f"MODEL.D2REG.FAMILY must be one of {sorted(BACKBONE_FAMILIES)}, got {family!r}.")
    return BACKBONE_FAMILIES[family](cfg)
