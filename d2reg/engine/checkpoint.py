"""``D2RegCheckpointer``: detectron2's checkpointer that reads DINOv2 checkpoints and refuses files
that match nothing.

detectron2's ``DetectionCheckpointer`` given an official / timm / Hugging Face DINOv2 file as
``MODEL.WEIGHTS`` (or ``train.init_checkpoint``) wraps it as ``{"model": ...}``, matches none of the
model's keys (they live under ``backbone.net.vit.``), logs a warning and leaves the model at its
random initialisation. ``D2RegCheckpointer`` detects those layouts, converts them to the model's
ViT (patch embedding resampled 14 -> the model's patch size, position embedding to its grid) and
raises :class:`d2reg.CheckpointError` for a weights file that matches none of the model's tensors.
"""
from __future__ import annotations

import logging
import random
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import CheckpointError, CheckpointInfo, detect_format, infer_info, read_state_dict, to_timm
from ..checkpoint.formats import D2_PREFIX, unwrap_state_dict
from ..modeling.backbone import DINOv2Backbone, _short
from ..solver import find_vit_backbone

__all__ = ["D2RegCheckpointer", "RNGState", "convert_for_backbone", "convert_to_detectron2"]

logger = logging.getLogger(__name__)

DINOV2_FORMATS = ("official", "timm", "hf")


def convert_for_backbone(
    sd: Dict[str, torch.Tensor], info: CheckpointInfo, backbone: DINOv2Backbone, patch_resize: str = "pi"
) -> Dict[str, torch.Tensor]:
    """The exact state dict of ``backbone.vit`` from timm-layout DINOv2 tensors; see
    :meth:`DINOv2Backbone.vit_state_dict_from`."""
    return backbone.vit_state_dict_from(sd, info, patch_resize)


class D2RegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads DINOv2 checkpoints (official / timm / Hugging Face
    layouts, ``.pth``/``.pt``/``.bin``/``.safetensors``, and backbone-only d2reg files at another
    patch size) into the model's :class:`DINOv2Backbone`, and raises :class:`CheckpointError`
    when a weights file matches none of the model's parameters.

    Everything else (detectron2 checkpoints of the full model, ``--resume``, model-zoo ``.pkl``)
    behaves as in detectron2.
    """

    def __init__(self, model, save_dir: str = "", *, patch_resize: str = "pi", save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.patch_resize = patch_resize
        self._loading: Optional[str] = None

    # -------------------------------------------------------------------------------- reading
    def _load_file(self, filename: str):
        self._loading = filename
        if filename.endswith(".pkl") or filename.endswith(".pyth"):
            return super()._load_file(filename)
        if filename.endswith((".safetensors", ".bin")):
            loaded = {"model": read_state_dict(filename)}
        else:
            loaded = super()._load_file(filename)
        weights = loaded.get("model")
        if not isinstance(weights, dict):
            return loaded
        try:
            raw = unwrap_state_dict(weights)
            fmt = detect_format(raw)
        except CheckpointError:
            return loaded  # not a DINOv2 layout: plain detectron2 loading (and the no-match check)
        backbone_only = fmt == "detectron2" and all(k.startswith(D2_PREFIX) for k in weights)
        if fmt not in DINOV2_FORMATS and not backbone_only:
            return loaded  # a detectron2 checkpoint of a whole model: loaded as is
        name, backbone = find_vit_backbone(self.model)
        if backbone is None:
            raise CheckpointError(
                f"{filename!r} is a DINOv2 checkpoint ({fmt} layout) but the model has no d2reg "
                "DINOv2Backbone to load it into."
            )
        sd = to_timm(raw, fmt)
        info = infer_info(sd, "timm")
        info.format, info.path = fmt, filename
        converted = convert_for_backbone(sd, info, backbone, self.patch_resize)
        prefix = f"{name}.vit." if name else "vit."
        self.logger.info(
            "d2reg: %s is a DINOv2 checkpoint (%s layout, %s, patch %d -> %d): loading %d tensors into "
            "%s*; the rest of the model keeps its initialisation.",
            filename, fmt, info.arch or "custom", info.patch_size, backbone.patch_size, len(converted), prefix,
        )
        return {"model": {prefix + k: v for k, v in converted.items()}, "__author__": f"d2reg ({fmt} layout)"}

    def _load_model(self, checkpoint):
        weights = checkpoint.get("model", {})
        own = self.model.state_dict()
        if not checkpoint.get("matching_heuristics", False):
            stripped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
            names = sorted(stripped)
            matched = [k for k in names if k in own and tuple(own[k].shape) == _shape(stripped[k])]
            if weights and not matched:
                raise CheckpointError(
                    f"weights file {self._loading!r} matches none of the model's {len(own)} tensors (its "
                    f"first keys: {_short(names, 4)}; the model's: {_short(sorted(own), 4)}). It is "
                    "neither a checkpoint of this model nor a DINOv2 checkpoint d2reg can read; detectron2 "
                    "would have trained from random initialisation."
                )
        return super()._load_model(checkpoint)


def _shape(v) -> tuple:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v))


class RNGState:
    """A checkpointable holding Python / NumPy / torch (CPU and CUDA) random states, so that a
    resumed run draws the same random numbers as an uninterrupted one. Stored as tensors and plain
    Python values (loadable with ``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict:
        version, mt, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out = {
            "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load_state_dict(self, state: dict) -> None:
        p, n = state["python"], state["numpy"]
        random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def convert_to_detectron2(
    path: str,
    patch_size: int = 16,
    patch_resize: str = "pi",
    pretrain_img_size: int = 518,
    final_norm: bool = False,
    prefix: str = D2_PREFIX,
) -> Dict[str, object]:
    """A DINOv2 checkpoint in any layout d2reg reads -> ``{"model": {prefix + timm key: tensor}}`` for
    a :class:`DINOv2Backbone` at ``patch_size`` (all blocks kept; the final norm only with
    ``final_norm``), loadable by detectron2's stock ``DetectionCheckpointer`` (``MODEL.WEIGHTS`` /
    ``train.init_checkpoint``) into a d2reg model built with the same settings."""
    from ..checkpoint import load_dinov2_checkpoint

    sd, info = load_dinov2_checkpoint(path)
    with torch.device("meta"):  # shapes only
        backbone = DINOv2Backbone(
            arch="vit_giant2" if info.swiglu else (info.arch or "vit_small"),
            embed_dim=info.embed_dim, depth=info.depth, num_heads=max(1, info.embed_dim // 64),
            num_register_tokens=info.num_register_tokens, patch_size=patch_size,
            pretrain_img_size=pretrain_img_size, final_norm=final_norm,
        )
    converted = convert_for_backbone(sd, info, backbone, patch_resize)
    return {
        "model": {prefix + k: v.contiguous() for k, v in converted.items()},
        "__author__": f"d2reg convert_checkpoint ({info.format} layout, patch {info.patch_size} -> {patch_size})",
        "matching_heuristics": False,
    }
