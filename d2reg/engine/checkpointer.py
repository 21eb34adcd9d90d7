"""``D2RegCheckpointer``: detectron2's checkpointer that reads DINOv2 checkpoints and refuses files
that match nothing.

detectron2's ``DetectionCheckpointer`` given an official / timm / Hugging Face DINOv2 file as
``MODEL.WEIGHTS`` (or ``train.init_checkpoint``) wraps it as ``{"model": ...}``, matches none of the
model's keys (they live under ``backbone.net.vit.``), logs a warning and leaves the model at its
random initialisation. ``D2RegCheckpointer`` detects those layouts, converts them to the model's
ViT (patch embedding resampled 14 -> the model's patch size, position embedding to its grid) and
raises :class:`d2reg.CheckpointError` for a weights file that matches none of the model's tensors.

Frozen weights: a backbone built with ``save_frozen=False`` (or ``D2RegCheckpointer(..., save_frozen=False)``)
is saved without the ViT tensors that do not train (every ViT entry but its trainable parameters: the whole
ViT with ``freeze_at="all"``, the base weights with LoRA). The file records which keys it left out, the
backbone's ``weights`` file and a per-tensor fingerprint; on load those keys keep the values the model
took from its own ``weights`` (no missing-key warning), after checking that the model has a weights file
and that its tensors match the fingerprints.
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Dict, List, Optional, Tuple

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
from ..checkpoint.eomt import add_delta, check_eomt_heads, delta_heads, detect_eomt_layout, split_eomt_state_dict
from ..checkpoint.errors import short_list
from ..modeling.lora import to_lora_keys, without_lora
from ..solver import find_vit_backbone, vit_backbones

__all__ = ["OMITTED_KEY", "D2RegCheckpointer", "RNGState"]

logger = logging.getLogger(__name__)

# top-level entry of a checkpoint saved without frozen ViT tensors: {backbone name: {"weights": path,
# "keys": [full state-dict keys left out], "fingerprints": [sum |t| of each, float64]}}
OMITTED_KEY = "d2reg_omitted_frozen"
FINGERPRINT_RTOL = 1e-3  # loose enough for the same file loaded in fp32 or bf16, tight for another file


class D2RegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads DINOv2 checkpoints (official / timm / Hugging Face
    layouts, ``.pth``/``.pt``/``.bin``/``.safetensors``, and backbone-only d2reg files at another
    patch size) into the model's :class:`DINOv2Backbone`, and raises :class:`CheckpointError`
    when a weights file matches none of the model's parameters.

    Everything else (detectron2 checkpoints of the full model, ``--resume``, model-zoo ``.pkl``)
    behaves as in detectron2.
    """

    def __init__(self, model, save_dir: str = "", *, patch_resize: Optional[str] = None,
                 save_frozen: Optional[bool] = None, save_to_disk=None, **checkpointables):
        """``save_frozen``: None (default) follows each backbone's ``save_frozen``; True / False for all."""
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.patch_resize = patch_resize
        self.save_frozen = save_frozen
        self._loading: Optional[str] = None

    # -------------------------------------------------------------------------------- saving
    def _omitted(self) -> Dict[str, Tuple[torch.nn.Module, List[str]]]:
        """{backbone name: (backbone, ViT-local keys to leave out)} for the backbones that omit frozen tensors."""
        out = {}
        for name, b in vit_backbones(self.model):
            if (b.save_frozen if self.save_frozen is None else self.save_frozen):
                continue
            trainable = {n for n, p in b.vit.named_parameters() if p.requires_grad}
            keys = [k for k in b.vit.state_dict() if k not in trainable]
            if not keys:
                continue
            if not getattr(b, "weights", None):
                raise CheckpointError(
                    f"save_frozen=False, but the backbone {name or '(the model)'!r} has no weights file to reload "
                    "its frozen tensors from: build it with weights=<file> (MODEL.D2REG.WEIGHTS) or save with "
                    "save_frozen=True."
                )
            out[name] = (b, keys)
        return out

    def save(self, name: str, **kwargs) -> None:
        """detectron2's ``save``; backbones that do not save their frozen tensors leave them out (see the
        module doc) and the file records what it omitted under :data:`OMITTED_KEY`."""
        omitted = self._omitted() if self.save_dir and self.save_to_disk else None
        if not omitted:
            return super().save(name, **kwargs)
        record = {}
        with contextlib.ExitStack() as stack:
            for bname, (b, keys) in omitted.items():
                prefix = f"{bname}.vit." if bname else "vit."
                state = b.vit.state_dict()
                record[bname] = {"weights": b.weights, "keys": [prefix + k for k in keys],
                                 "fingerprints": torch.tensor([_fingerprint(state[k]) for k in keys],
                                                              dtype=torch.float64)}
                drop = set(keys)

                def hook(module, state_dict, hook_prefix, local_metadata, drop=drop):
                    for k in [k for k in state_dict if k.startswith(hook_prefix) and k[len(hook_prefix):] in drop]:
                        del state_dict[k]

                stack.callback(b.vit.register_state_dict_post_hook(hook).remove)
            self.logger.info("d2reg: leaving %d frozen ViT tensors out of the checkpoint (reloaded from %s).",
                             sum(len(r["keys"]) for r in record.values()),
                             ", ".join(sorted({str(r["weights"]) for r in record.values()})))
            super().save(name, **kwargs, **{OMITTED_KEY: record})

    # -------------------------------------------------------------------------------- reading
    def _load_file(self, filename: str):
        self._loading = filename
        if filename.endswith(".pkl") or filename.endswith(".pyth"):
            return super()._load_file(filename)
        if filename.endswith((".safetensors", ".bin", ".ckpt")):  # .ckpt: official EoMT (Lightning) files
            loaded = {"model": read_state_dict(filename)}
        else:
            loaded = super()._load_file(filename)
        weights = loaded.get("model")
        if not isinstance(weights, dict) or OMITTED_KEY in loaded:
            return loaded  # (a model saved without its frozen ViT tensors is loaded as is)
        raw = unwrap_state_dict(weights)
        if detect_eomt_layout(raw) is not None:
            return self._load_eomt(filename, raw)
        try:
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
        converted = self._fit_backbone(backbone, sd, info)
        prefix = f"{name}.vit." if name else "vit."
        self.logger.info(
            "d2reg: %s is %s; loading %d tensors into %s* (patch %d -> %d); the rest of the model keeps its "
            "initialisation.", filename, info.describe(), len(converted), prefix, info.patch_size, backbone.patch_size,
        )
        return {"model": {prefix + k: v for k, v in converted.items()}, "__author__": f"d2reg ({fmt} layout)"}

    def _fit_backbone(self, backbone, sd, info) -> Dict[str, torch.Tensor]:
        fit_kwargs = dict(backbone.fit_kwargs)
        if self.patch_resize is not None:
            fit_kwargs["patch_resize"] = self.patch_resize
        with without_lora(backbone.vit):  # a pre-trained file fits the plain layers; to_lora_keys renames after
            return fit_state_dict(sd, info, backbone.vit, **fit_kwargs)

    def _load_eomt(self, filename: str, raw: Dict[str, torch.Tensor]) -> dict:
        """An official EoMT checkpoint (Lightning / transformers) -> the d2reg ``EoMT``'s keys: the ViT through
        the family pipeline and fitted to the backbone; a DINOv3 delta added to the backbone's ``weights``."""
        name, backbone = find_vit_backbone(self.model)
        if backbone is None or not hasattr(self.model, "attn_mask_probs"):
            raise CheckpointError(f"{filename!r} is an official EoMT checkpoint, but the model is not a d2reg EoMT "
                                  "(MODEL.META_ARCHITECTURE EoMT; LazyConfig L(EoMT)) with a d2reg ViT backbone.")
        vit, heads, layout, is_delta = split_eomt_state_dict(raw)
        check_eomt_heads(heads, self.model.state_dict(), repr(filename))
        family, fmt, _ = detect(vit)
        if backbone.checkpoint_family != family:
            raise CheckpointError(
                f"{filename!r} is an EoMT checkpoint of a {family} ViT, but the model's backbone is "
                f"{type(backbone).__name__} ({backbone.checkpoint_family}): set MODEL.D2REG.FAMILY {family}.")
        sd, info = convert_state_dict(vit, filename, family)
        if is_delta:
            if not getattr(backbone, "weights", None):
                raise CheckpointError(
                    f"{filename!r} stores its ViT as a delta over the DINOv3 weights (as the official DINOv3 EoMT "
                    "releases do): build the backbone with the DINOv3 file it was trained from "
                    "(MODEL.D2REG.WEIGHTS; LazyConfig model.backbone.weights), then load the EoMT checkpoint.")
            base, _ = convert_state_dict(read_state_dict(backbone.weights), backbone.weights, family)
            sd, heads = add_delta(sd, base), delta_heads(heads)
        converted = self._fit_backbone(backbone, sd, info)
        model = {f"{name}.vit.{k}": v for k, v in converted.items()}
        model.update(heads)
        self.logger.info("d2reg: %s is an official EoMT checkpoint (%s layout%s, %s); loading %d ViT and %d EoMT "
                         "tensors.", filename, layout, ", a delta over " + backbone.weights if is_delta else "",
                         info.describe(), len(converted), len(heads))
        return {"model": model, "__author__": f"d2reg (EoMT {layout} layout)"}

    def _load_model(self, checkpoint):
        omitted = checkpoint.pop(OMITTED_KEY, None)
        if omitted:
            self._check_omitted(omitted)
        own = self.model.state_dict()
        if isinstance(checkpoint.get("model"), dict):  # plain keys into LoRA-wrapped layers (base_layer)
            checkpoint["model"] = to_lora_keys(checkpoint["model"], own)
        weights = checkpoint.get("model", {})
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
        incompatible = super()._load_model(checkpoint)
        if omitted and incompatible is not None:
            left_out = {k for r in omitted.values() for k in r["keys"]}
            incompatible = incompatible._replace(
                missing_keys=[k for k in incompatible.missing_keys if k not in left_out])
        return incompatible

    def _check_omitted(self, omitted: dict) -> None:
        """The model must hold the frozen tensors the checkpoint left out: same backbones, each built
        from a weights file, tensors matching the saved fingerprints."""
        backbones = dict(vit_backbones(self.model))
        own = self.model.state_dict()
        for bname, rec in omitted.items():
            b = backbones.get(bname)
            where = f"{self._loading!r} was saved without the frozen ViT tensors of {bname or 'the model'!r} " \
                    f"({len(rec['keys'])} tensors, taken from {rec['weights']!r})"
            if b is None:
                raise CheckpointError(f"{where}, but this model has no d2reg ViT backbone named {bname!r}.")
            if not getattr(b, "weights", None):
                raise CheckpointError(
                    f"{where}, but the model's backbone was built without a weights file to take them from: build "
                    f"it with weights={rec['weights']!r} (MODEL.D2REG.WEIGHTS), as the model that was saved."
                )
            missing = [k for k in rec["keys"] if k not in own]
            wrong = [k for k, f in zip(rec["keys"], rec["fingerprints"].tolist())
                     if k in own and abs(_fingerprint(own[k]) - f) > FINGERPRINT_RTOL * max(abs(f), 1e-12)]
            if missing or wrong:
                found = ([f"it lacks {short_list(missing)}"] if missing else []) + \
                        ([f"its values differ in {short_list(wrong)}"] if wrong else [])
                raise CheckpointError(
                    f"{where}, but the model's backbone (weights {b.weights!r}) does not hold them: "
                    f"{'; '.join(found)}. Build the backbone with the weights file and architecture the "
                    "checkpoint was trained with."
                )


def _fingerprint(t: torch.Tensor) -> float:
    return float(t.detach().float().abs().sum())


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
