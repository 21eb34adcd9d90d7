"""Checkpoints: one pipeline (read -> detect -> convert -> fit) and one format module per family.

Depends on :mod:`d2reg.vit`, torch, timm and safetensors only (no detectron2).
"""
from . import dinov2
from .errors import CheckpointError, CheckpointInfo, StateDict
from .io import D2_PREFIXES, read_state_dict, unwrap_state_dict
from .pipeline import (
    FAMILIES,
    convert_state_dict,
    convert_to_detectron2,
    detect,
    fit_state_dict,
    load_checkpoint,
    load_dinov2_checkpoint,
    read_checkpoint_info,
)

__all__ = [
    "D2_PREFIXES",
    "FAMILIES",
    "CheckpointError",
    "CheckpointInfo",
    "StateDict",
    "convert_state_dict",
    "convert_to_detectron2",
    "detect",
    "dinov2",
    "fit_state_dict",
    "load_checkpoint",
    "load_dinov2_checkpoint",
    "read_checkpoint_info",
    "read_state_dict",
    "unwrap_state_dict",
]
