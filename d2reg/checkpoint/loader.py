"""Read a local DINOv2 checkpoint in any supported layout and return it in timm's layout."""
from __future__ import annotations

import logging
import os
from typing import Tuple

import torch

from .formats import CheckpointError, CheckpointInfo, StateDict, detect_format, infer_info, to_timm, unwrap_state_dict

logger = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pkl", ".ckpt")


def read_state_dict(path: str) -> StateDict:
    """Read tensors from ``path`` safely: safetensors, or ``torch.load(weights_only=True)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint not found: {path!r}. d2reg never downloads weights: pass a local .pth/.pt/"
            ".bin/.safetensors file (e.g. dinov2_vits14_reg4_pretrain.pth from the DINOv2 release)."
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code objects, wrong format...
        raise CheckpointError(
            f"could not read checkpoint {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "The file may be truncated or corrupt (download it again), or not a tensor checkpoint; "
            "pickles that need code to load are refused (weights_only=True): re-save the state dict "
            "with torch.save(model.state_dict(), path) or as .safetensors."
        ) from e
    return unwrap_state_dict(obj)


def load_dinov2_checkpoint(path: str) -> Tuple[StateDict, CheckpointInfo]:
    """Load a DINOv2 ViT checkpoint from a local file and convert it to timm's layout.

    Supported layouts (detected from the keys): the official DINOv2 release (with and without
    registers, ViT-g's SwiGLU), timm, Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel``
    and detectron2 checkpoints of d2reg models (``{"model": {"backbone.net.vit.*"}}``).

    Returns:
        (state_dict, info): timm-layout tensors at the checkpoint's own patch size and
        position-embedding grid (resampling happens when loading into a model), and the
        :class:`CheckpointInfo` (format, arch, embed_dim, depth, patch size, registers, ...).
    """
    raw = read_state_dict(path)
    fmt = detect_format(raw)
    sd = to_timm(raw, fmt)
    info = infer_info(sd, "timm")
    info.format, info.path = fmt, os.fspath(path)
    logger.info(
        "d2reg: read %s checkpoint %s: %s (dim %d, %d blocks, patch %d, %d registers%s)",
        fmt, path, info.arch or "custom", info.embed_dim, info.depth, info.patch_size,
        info.num_register_tokens, ", SwiGLU" if info.swiglu else "",
    )
    return sd, info
