"""The one checkpoint pipeline: read (optionally shapes only) -> detect family and layout -> convert
to timm's layout -> fit to a model. Every caller (the backbones, the trainer's checkpointer, the
analysis tools, ``tools/convert_checkpoint.py``) goes through these functions.

A model family is a module in this package with ``FAMILY``, ``LAYOUTS``, ``detect_layout(sd)``,
``to_timm(sd, layout)``, ``checkpoint_info(timm_sd, format, path)``, ``create_model(info, patch_size, **kw)`` and
``fit_to_model(timm_sd, info, vit, **kw)``; adding a family is one module and one entry in
:data:`FAMILIES`.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch

from . import dinov2, dinov3
from .errors import CheckpointError, CheckpointInfo, StateDict
from .io import D2_PREFIXES, read_state_dict

__all__ = [
    "FAMILIES",
    "FAMILY_BACKBONES",
    "convert_state_dict",
    "convert_to_detectron2",
    "detect",
    "fit_state_dict",
    "load_checkpoint",
    "load_dinov2_checkpoint",
    "read_checkpoint_info",
]

logger = logging.getLogger(__name__)

# Asked in this order; each module claims only its own files (DINOv2: a learned position table).
FAMILIES: Dict[str, ModuleType] = {dinov2.FAMILY: dinov2, dinov3.FAMILY: dinov3}
FAMILY_BACKBONES = {"dinov2": "DINOv2Backbone (MODEL.D2REG.FAMILY dinov2)",
                    "dinov3": "DINOv3Backbone (MODEL.D2REG.FAMILY dinov3)"}


def detect(sd: StateDict) -> Tuple[str, str, StateDict]:
    """(family, layout, tensors in that family's own layout) of a raw state dict. The "detectron2"
    layout (a d2reg model saved by detectron2: ``backbone.net.vit.*``) is unwrapped to its timm keys."""
    layout = None
    prefix = next((p for p in D2_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if prefix is not None:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        layout = "detectron2"
    for family, module in FAMILIES.items():
        found = module.detect_layout(sd)
        if found is not None and (layout is None or found == "timm"):
            return family, layout or found, sd
    sample = ", ".join(sorted(sd)[:6])
    raise CheckpointError(
        "unknown checkpoint layout: found none of the keys of the DINOv2 (official: cls_token, "
        "register_tokens, pos_embed; timm: reg_token; Hugging Face: embeddings.patch_embeddings.*)"
        ", DINOv3 (official: storage_tokens, rope_embed.periods; timm: reg_token + blocks.N.gamma_1; Hugging "
        f"Face: embeddings.patch_embeddings.weight) or d2reg detectron2 ({D2_PREFIXES[0]}*) layouts. "
        f"First keys: {sample}."
    )


def convert_state_dict(
    raw: StateDict, path: str = "", family: Optional[str] = None
) -> Tuple[StateDict, CheckpointInfo]:
    """Raw tensors (from :func:`read_state_dict`) -> (timm-layout tensors, :class:`CheckpointInfo`);
    ``family``: refuse other families with a clear error."""
    found, layout, sd = detect(raw)
    if family is not None and found != family:
        raise CheckpointError(
            f"{path or 'the checkpoint'!r} is a {found} checkpoint ({layout} layout), but a {family} model "
            f"was asked to load it. Use {FAMILY_BACKBONES.get(found, found)} for this file, or pass a "
            f"{family} checkpoint."
        )
    module = FAMILIES[found]
    sd = module.to_timm(sd, "timm" if layout == "detectron2" else layout)
    return sd, module.checkpoint_info(sd, layout, path)


def load_checkpoint(path: str, family: Optional[str] = None) -> Tuple[StateDict, CheckpointInfo]:
    """A local checkpoint of any supported family and layout -> (timm-layout tensors at the
    checkpoint's own patch size and grid, :class:`CheckpointInfo`). ``family``: refuse other families
    with a clear error. Resampling to a model happens in :func:`fit_state_dict`."""
    sd, info = convert_state_dict(read_state_dict(path), os.fspath(path), family)
    logger.info("d2reg: read %s: %s", path, info.describe())
    return sd, info


def load_dinov2_checkpoint(path: str) -> Tuple[StateDict, CheckpointInfo]:
    """Load a DINOv2 ViT checkpoint from a local file and convert it to timm's layout.

    Supported layouts (detected from the keys): the official DINOv2 release (with and without
    registers, ViT-g's SwiGLU), timm, Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel``
    and detectron2 checkpoints of d2reg models (``{"model": {"backbone.net.vit.*"}}``).

    Returns:
        (state_dict, info): timm-layout tensors at the checkpoint's own patch size and
        position-embedding grid, and the :class:`CheckpointInfo`.
    """
    return load_checkpoint(path, family="dinov2")


def read_checkpoint_info(path: str, family: Optional[str] = None) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a file from its tensor shapes alone (no tensor data read)."""
    return convert_state_dict(read_state_dict(path, shapes_only=True), os.fspath(path), family)[1]


def fit_state_dict(sd: StateDict, info: CheckpointInfo, vit: torch.nn.Module, **kwargs) -> StateDict:
    """timm-layout tensors (from :func:`load_checkpoint`) -> the exact state dict of ``vit``, by the
    family's ``fit_to_model`` (architecture checks, patch / position resampling, pruned parts dropped)."""
    return FAMILIES[info.family].fit_to_model(sd, info, vit, **kwargs)


def convert_to_detectron2(
    path: str,
    patch_size: int = 16,
    final_norm: bool = False,
    prefix: str = D2_PREFIXES[0],
    **fit_kwargs,
) -> Dict[str, object]:
    """A checkpoint in any layout d2reg reads -> ``{"model": {prefix + timm key: tensor}}`` for a d2reg
    backbone at ``patch_size`` (all blocks kept; the final norm only with ``final_norm``), loadable by
    detectron2's stock ``DetectionCheckpointer`` (``MODEL.WEIGHTS`` / ``train.init_checkpoint``) into a
    d2reg model built with the same settings. ``fit_kwargs`` go to the family's ``fit_to_model``
    (DINOv2: ``patch_resize``); ``pretrain_img_size`` (DINOv2: the stored position grid, in 14-px
    patches) to its ``create_model``."""
    sd, info = load_checkpoint(path)
    module = FAMILIES[info.family]
    model_kwargs = {k: fit_kwargs.pop(k) for k in ("pretrain_img_size",) if k in fit_kwargs}
    with torch.device("meta"):  # shapes only
        vit = module.create_model(info, patch_size=patch_size, **model_kwargs)
        if not final_norm:
            vit.prune_intermediate_layers(list(range(info.depth)), prune_norm=True, prune_head=True)
    converted = fit_state_dict(sd, info, vit, **fit_kwargs)
    return {
        "model": {prefix + k: v.contiguous() for k, v in converted.items()},
        "__author__": f"d2reg convert_checkpoint ({info.family}, {info.format} layout, "
                      f"patch {info.patch_size} -> {patch_size})",
        "matching_heuristics": False,
    }
