"""Checkpoint reading and layout conversion (official / timm / Hugging Face / detectron2)."""
from .formats import CheckpointError, CheckpointInfo, detect_format, hf_to_official, infer_info, to_timm
from .loader import load_dinov2_checkpoint, read_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "detect_format",
    "hf_to_official",
    "infer_info",
    "load_dinov2_checkpoint",
    "read_state_dict",
    "to_timm",
]
