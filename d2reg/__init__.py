"""d2reg: DINOv2(-with-registers) and DINOv3 ViT backbones for detectron2.

Importing d2reg registers ``build_d2reg_sfp_backbone`` and ``build_d2reg_vit_backbone`` in detectron2's
``BACKBONE_REGISTRY`` and ``LinearSemSegHead`` in ``SEM_SEG_HEADS_REGISTRY`` and ``EoMT`` in ``META_ARCH_REGISTRY``.
"""
from .checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, load_dinov2_checkpoint
from .config import add_d2reg_config
from .modeling import (
    DINOv2Backbone,
    DINOv3Backbone,
    EoMT,
    LinearSemSegHead,
    MultiLayerFeaturePyramid,
    MultiLayerReader,
    SimpleFeaturePyramid,
    ViTBackbone,
    build_d2reg_sfp_backbone,
    build_d2reg_vit_backbone,
    evenly_spaced_blocks,
)
from .solver import lr_decay_rate
from .vit import ARCHS, ViTArch, create_dinov2_vit

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "CheckpointError",
    "CheckpointInfo",
    "DINOv2Backbone",
    "DINOv3Backbone",
    "EoMT",
    "LinearSemSegHead",
    "MultiLayerFeaturePyramid",
    "MultiLayerReader",
    "SimpleFeaturePyramid",
    "ViTBackbone",
    "ViTArch",
    "add_d2reg_config",
    "build_d2reg_sfp_backbone",
    "build_d2reg_vit_backbone",
    "create_dinov2_vit",
    "evenly_spaced_blocks",
    "load_checkpoint",
    "load_dinov2_checkpoint",
    "lr_decay_rate",
]
