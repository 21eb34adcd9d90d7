"""Official EoMT checkpoints -> d2reg :class:`~d2reg.modeling.eomt.EoMT` state dicts (pure functions on
state dicts, like timm's ``checkpoint_filter_fn``).

Two released layouts are read:

* **lightning**: the tue-mps/eomt ``LightningModule`` state (a ``.ckpt`` with ``state_dict``, or a
  ``.bin``/``.pth`` of the same keys): ``network.q.weight``, ``network.class_head.*``,
  ``network.mask_head.{0,2,4}.*``, ``network.upscale.N.{conv1,conv2,norm}.*``, ``network.attn_mask_probs``
  and the backbone under ``network.encoder.backbone.*`` -- timm names for DINOv2, the transformers
  ``DINOv3ViTModel`` names after the official ``transformers_to_timm`` rename (``embeddings.`` ->
  ``patch_embed.``, ``layer.N`` -> ``blocks.N``, mask token dropped) for DINOv3. DINOv3 releases are
  *deltas*: every tensor is added to the model's initial state (the base DINOv3 weights for the
  backbone, zeros elsewhere), so the base DINOv3 file is needed (``base=``).
* **hf**: transformers' ``EomtForUniversalSegmentation`` (``query.weight``, ``class_predictor.*``,
  ``mask_head.fc{1,2,3}.*``, ``upscale_block.block.N.*``, ``layers.N.*``, ``embeddings.*``).

:func:`split_eomt_state_dict` returns ``(backbone_sd, head_sd)``: the backbone in a layout d2reg's family
pipeline (:func:`d2reg.checkpoint.pipeline.convert_state_dict`) reads, and the EoMT-level tensors already
under the d2reg EoMT names (``q.weight``, ``class_head.*``, ``mask_head.{0,2,4}.*``, ``upscale.N.*``,
``attn_mask_probs``).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import torch

from .errors import CheckpointError, StateDict

__all__ = [
    "EOMT_LAYOUTS",
    "check_eomt_heads",
    "detect_eomt_layout",
    "hf_eomt_backbone_to_timm",
    "split_eomt_state_dict",
]

EOMT_LAYOUTS = ("lightning", "hf")
_LIGHTNING_BACKBONE = "network.encoder.backbone."
_DROP = ("criterion.empty_weight", "network.encoder.pixel_mean", "network.encoder.pixel_std")


def _strip_compile(sd: StateDict) -> StateDict:
    return {k.replace("._orig_mod", ""): v for k, v in sd.items()}


def detect_eomt_layout(sd: StateDict) -> Optional[str]:
    """"lightning" | "hf" when ``sd`` is an EoMT checkpoint, else None."""
    keys = set(sd)
    if "network.q.weight" in keys or any(k.startswith(_LIGHTNING_BACKBONE) for k in keys):
        return "lightning"
    if {"query.weight", "class_predictor.weight"} <= keys and any(k.startswith("upscale_block.") for k in keys):
        return "hf"
    return None


def is_dinov3_lightning(sd: StateDict) -> bool:
    """True for the official DINOv3 layout (transformers DINOv3ViTModel names under the backbone prefix)."""
    return any(k.startswith(_LIGHTNING_BACKBONE + "patch_embed.patch_embeddings.") for k in sd)


def _lightning_backbone(sd: StateDict) -> StateDict:
    """``network.encoder.backbone.*`` -> the family's own layout (timm for DINOv2; transformers
    ``DINOv3ViTModel`` names, i.e. the official rename undone, for DINOv3)."""
    bb = {k[len(_LIGHTNING_BACKBONE):]: v for k, v in sd.items() if k.startswith(_LIGHTNING_BACKBONE)}
    if not is_dinov3_lightning(sd):
        return bb
    out = {}
    for k, v in bb.items():
        if k.startswith("patch_embed."):
            k = "embeddings." + k[len("patch_embed."):]
        elif k.startswith("blocks."):
            k = "layer." + k[len("blocks."):]
        out[k] = v
    return out


_HF_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_BLOCK_MAP = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.out_proj.weight": "attn.proj.weight", "attention.out_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.fc1.weight", "mlp.weights_in.bias": "mlp.fc1.bias",
    "mlp.weights_out.weight": "mlp.fc2.weight", "mlp.weights_out.bias": "mlp.fc2.bias",
}


def hf_eomt_backbone_to_timm(sd: StateDict) -> StateDict:
    """transformers ``EomtForUniversalSegmentation`` ViT tensors -> timm DINOv2-reg names
    (``blocks.N.attn.qkv`` = cat(q, k, v) ``(3D, D)``; ``pos_embed`` ``(1, gh*gw, D)``, no class entry,
    as timm's ``*_reg4_dinov2`` models)."""
    out: StateDict = {}
    qkv: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k == "embeddings.register_tokens":
            out["reg_token"] = v
        elif k == "embeddings.patch_embeddings.projection.weight":
            out["patch_embed.proj.weight"] = v
        elif k == "embeddings.patch_embeddings.projection.bias":
            out["patch_embed.proj.bias"] = v
        elif k == "embeddings.position_embeddings.weight":
            out["pos_embed"] = v.unsqueeze(0)
        elif k in ("layernorm.weight", "layernorm.bias"):
            out["norm." + k.split(".")[-1]] = v
        elif (m := _HF_BLOCK.match(k)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            pm = re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)
            if pm is not None:
                qkv.setdefault(i, {})[pm.group(1) + pm.group(2)] = v
            elif rest in _HF_BLOCK_MAP:
                out[f"blocks.{i}.{_HF_BLOCK_MAP[rest]}"] = v
            else:
                raise CheckpointError(f"unknown transformers EoMT block tensor {k!r}")
    for i, parts in qkv.items():
        for kind in ("weight", "bias"):
            if all(p + kind in parts for p in "qkv"):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[p + kind] for p in "qkv"], 0)
    return out


def _heads(sd: StateDict, layout: str) -> StateDict:
    """The EoMT-level tensors under d2reg's EoMT names."""
    out: StateDict = {}
    if layout == "lightning":
        for k, v in sd.items():
            if k.startswith("network.") and not k.startswith("network.encoder."):
                out[k[len("network."):]] = v
        return out
    mlp = {"fc1": "0", "fc2": "2", "fc3": "4"}
    for k, v in sd.items():
        if k == "query.weight":
            out["q.weight"] = v
        elif k.startswith("class_predictor."):
            out["class_head." + k.split(".", 1)[1]] = v
        elif k.startswith("mask_head."):
            _, fc, rest = k.split(".", 2)
            out[f"mask_head.{mlp[fc]}.{rest}"] = v
        elif k.startswith("upscale_block.block."):
            n, rest = k[len("upscale_block.block."):].split(".", 1)
            out[f"upscale.{n}.{rest.replace('layernorm2d', 'norm')}"] = v
        elif k == "attn_mask_probs":
            out[k] = v
    return out


def split_eomt_state_dict(
    sd: StateDict, base: Optional[StateDict] = None, delta: Optional[bool] = None
) -> Tuple[StateDict, StateDict, str]:
    """An EoMT checkpoint -> ``(backbone_sd, head_sd, layout)``.

    ``base``: the base backbone weights in the same family layout as the returned backbone (for DINOv3
    deltas: the transformers ``DINOv3ViTModel`` names, as d2reg's HF reader produces them from the file
    with ``embeddings.*`` / ``layer.N.*``); ``delta``: None = the DINOv3 Lightning releases are deltas
    (as published), True / False to force."""
    sd = {k: v for k, v in _strip_compile(sd).items() if not k.endswith(_DROP)}
    layout = detect_eomt_layout(sd)
    if layout is None:
        raise CheckpointError("not an EoMT checkpoint: no network.q.weight / network.encoder.backbone.* "
                              "(official Lightning) or query.weight + class_predictor.* (transformers) keys")
    if layout == "lightning":
        backbone = _lightning_backbone(sd)
        backbone.pop("embeddings.mask_token", None)
        if delta is None:
            delta = is_dinov3_lightning(sd)
        if delta:
            if base is None:
                raise CheckpointError(
                    "this EoMT checkpoint stores its backbone as a delta over the DINOv3 weights (the official "
                    "DINOv3 releases do): give the base DINOv3 file as the backbone's weights "
                    "(MODEL.D2REG.WEIGHTS / backbone weights=...), the same file the checkpoint was trained from.")
            missing = sorted(set(backbone) - set(base))
            if missing:
                raise CheckpointError(f"the base DINOv3 weights lack {len(missing)} of the delta's tensors "
                                      f"(first: {missing[:4]}): is it the model the EoMT checkpoint was trained from?")
            for k, v in backbone.items():
                if base[k].shape != v.shape:
                    raise CheckpointError(f"delta {k}: shape {tuple(v.shape)} vs base {tuple(base[k].shape)}")
            backbone = {k: base[k].to(v.dtype) + v for k, v in backbone.items()}
    else:
        backbone = hf_eomt_backbone_to_timm(sd)
    return backbone, _heads(sd, layout), layout


def check_eomt_heads(head_sd: StateDict, model: torch.nn.Module, path: str = "") -> None:
    """Raise :class:`CheckpointError` naming the config key when the checkpoint's class / query counts
    differ from the model's (``class_head`` rows = num_classes + 1)."""
    where = path or "the EoMT checkpoint"
    msd = model.state_dict()
    if "class_head.weight" in head_sd and "class_head.weight" in msd:
        got, want = head_sd["class_head.weight"].shape[0], msd["class_head.weight"].shape[0]
        if got != want:
            raise CheckpointError(
                f"{where} has {got - 1} classes (class_head rows = num_classes + 1 = {got}), the model {want - 1}: "
                f"set MODEL.EOMT.NUM_CLASSES {got - 1} (LazyConfig: model.num_classes={got - 1}).")
    if "q.weight" in head_sd and "q.weight" in msd:
        got, want = head_sd["q.weight"].shape[0], msd["q.weight"].shape[0]
        if got != want:
            raise CheckpointError(f"{where} has {got} queries, the model {want}: set MODEL.EOMT.NUM_QUERIES {got} "
                                  f"(LazyConfig: model.num_queries={got}).")
    if "attn_mask_probs" in head_sd and "attn_mask_probs" in msd:
        got, want = head_sd["attn_mask_probs"].shape[0], msd["attn_mask_probs"].shape[0]
        if got != want:
            raise CheckpointError(f"{where} has {got} query blocks, the model {want}: set MODEL.EOMT.NUM_BLOCKS {got}.")
