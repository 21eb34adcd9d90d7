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
from typing import Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..checkpoint import (
    D2_PREFIXES,
    CheckpointError,
    convert_state_dict,
    detect,
    fit_state_dict,
    read_state_dict,
    unwrap_state_dict,
)
from ..checkpoint.errors import short_list
from ..solver import find_vit_backbone

__all__ = ["D2RegCheckpointer", "RNGState"]

logger = logging.getLogger(__name__)


class D2RegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads DINOv2 checkpoints (official / timm / Hugging Face
    layouts, ``.pth``/``.pt``/``.bin``/``.safetensors``, and backbone-only d2reg files at another
    patch size) into the model's :class:`DINOv2Backbone`, and raises :class:`CheckpointError`
    when a weights file matches none of the model's parameters.

    Everything else (detectron2 checkpoints of the full model, ``--resume``, model-zoo ``.pkl``)
    behaves as in detectron2.
    """

    def __init__(self, model, save_dir: str = "", *, patch_resize: Optional[str] = None, save_to_disk=None,
                 **checkpointables):
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
            family, fmt, _ = detect(raw)
        except CheckpointError:
            return loaded  # not a d2reg family's layout: plain detectron2 loading (and the no-match check)
        if fmt == "detectron2" and not all(k.startswith(D2_PREFIXES) for k in weights):
            return loaded  # a detectron2 checkpoint of a whole model: loaded as is
        name, backbone = find_vit_backbone(self.model)
        if backbone is None:
            raise CheckpointError(
                f"{filename!r} is a {family} checkpoint ({fmt} layout) but the model has no d2reg ViT "
                "backbone to load it into."
            )
        if backbone.checkpoint_family != family:
            raise CheckpointError(
                f"{filename!r} is a {family} checkpoint ({fmt} layout), but the model's backbone is "
                f"{type(backbone).__name__} ({backbone.checkpoint_family}). Pass a {backbone.checkpoint_family} "
                f"file, or build the {family} backbone (MODEL.D2REG.FAMILY {family})."
            )
        sd, info = convert_state_dict(raw, filename, family)
        fit_kwargs = dict(backbone.fit_kwargs)
        if self.patch_resize is not None:
            fit_kwargs["patch_resize"] = self.patch_resize
        converted = fit_state_dict(sd, info, backbone.vit, **fit_kwargs)
        prefix = f"{name}.vit." if name else "vit."
        self.logger.info(
            "d2reg: %s is %s; loading %d tensors into %s* (patch %d -> %d); the rest of the model keeps its "
            "initialisation.", filename, info.describe(), len(converted), prefix, info.patch_size, backbone.patch_size,
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
                    f"first keys: {short_list(names, 4)}; the model's: {short_list(sorted(own), 4)}). It is "
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
