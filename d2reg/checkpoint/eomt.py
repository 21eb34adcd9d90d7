"""Official EoMT checkpoints -> a backbone state dict for the family pipeline + d2reg ``EoMT`` head tensors
(pure functions on state dicts, like timm's ``checkpoint_filter_fn``; no detectron2).

Layouts read:

* **lightning** (tue-mps/eomt): the ``LightningModule`` state (a ``.ckpt`` with ``state_dict``, or a
  ``.bin`` / ``.pth`` of the same keys): ``network.q.weight``, ``network.class_head.*``,
  ``network.mask_head.{0,2,4}.*``, ``network.upscale.N.{conv1,conv2,norm}.*``, ``network.attn_mask_probs``
  and the ViT under ``network.encoder.backbone.*`` -- timm names for DINOv2; for DINOv3 the transformers
  ``DINOv3ViTModel`` modules (of transformers 4.56, whose model holds ``layer`` itself) under the official
  ``transformers_to_timm`` renames (``embeddings`` -> ``patch_embed``, ``layer`` -> ``blocks``). The DINOv3
  releases are **deltas**: the official loader adds every tensor to the model's initial state (the DINOv3
  weights for the ViT, zeros for the other parameters, the initial buffers: ``attn_mask_probs`` ones), so
  the base DINOv3 file is needed.
* **hf**: transformers' ``EomtForUniversalSegmentation`` (DINOv2: ``embeddings.patch_embeddings.projection``,
  ``embeddings.position_embeddings``, ``layers.N.attention.{q,k,v,out}_proj``) and
  ``EomtDinov3ForUniversalSegmentation`` (``embeddings.patch_embeddings`` conv, ``layers.N.attention.o_proj``,
  RoPE), both with ``query.weight``, ``class_predictor.*``, ``mask_head.fc{1,2,3}.*``,
  ``upscale_block.block.N.*``, ``layernorm.*``.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import torch

from .errors import CheckpointError, StateDict

__all__ = ["EOMT_LAYOUTS", "add_delta", "check_eomt_heads", "delta_heads", "detect_eomt_layout",
           "split_eomt_state_dict"]

EOMT_LAYOUTS = ("lightning", "hf")
_LIGHTNING_VIT = "network.encoder.backbone."
_DROPPED = ("criterion.empty_weight", "network.encoder.pixel_mean", "network.encoder.pixel_std")
# head tensors whose initial value is not zero (a delta checkpoint stores final - initial)
_INITIAL_ONES = ("attn_mask_probs",)


def detect_eomt_layout(sd: StateDict) -> Optional[str]:
    """"lightning" | "hf" when ``sd`` is an EoMT checkpoint, else None."""
    if "network.q.weight" in sd or any(k.startswith(_LIGHTNING_VIT) for k in sd):
        return "lightning"
    if {"query.weight", "class_predictor.weight"} <= set(sd) and any(k.startswith("upscale_block.") for k in sd):
        return "hf"
    return None


def _is_dinov3(sd: StateDict, layout: str) -> bool:
    if layout == "lightning":
        return any(k.startswith(_LIGHTNING_VIT + "patch_embed.patch_embeddings.") for k in sd)
    return "embeddings.patch_embeddings.weight" in sd  # DINOv2's is patch_embeddings.projection.weight


def _lightning_vit(sd: StateDict, dinov3: bool) -> StateDict:
    """``network.encoder.backbone.*`` -> timm names (DINOv2) or ``DINOv3ViTModel`` names (DINOv3)."""
    vit = {k[len(_LIGHTNING_VIT):]: v for k, v in sd.items() if k.startswith(_LIGHTNING_VIT)}
    if not dinov3:
        return vit
    renames = (("patch_embed.", "embeddings."), ("blocks.", "layer."))
    out = {}
    for k, v in vit.items():
        for a, b in renames:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    out.pop("embeddings.mask_token", None)  # pre-training only; RoPE periods are recomputed
    return {k: v for k, v in out.items() if not k.startswith("rope_embeddings.")}


_HF_V2_BLOCK = {
    "attention.out_proj": "attn.proj", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",
}


def _hf_dinov2_vit(sd: StateDict) -> StateDict:
    """transformers ``EomtForUniversalSegmentation`` ViT -> timm DINOv2-reg names (``attn.qkv`` = cat(q, k, v);
    ``pos_embed`` ``(1, h*w, D)`` without a CLS row, as timm's ``*_reg4_dinov2`` models)."""
    out: StateDict = {}
    qkv: Dict[int, Dict[str, torch.Tensor]] = {}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k == "embeddings.position_embeddings.weight":
            out["pos_embed"] = v.unsqueeze(0)
        elif (m := re.match(r"^layers\.(\d+)\.(.+)$", k)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            if (pm := re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)) is not None:
                qkv.setdefault(i, {})[pm.group(1) + pm.group(2)] = v
                continue
            for a, b in _HF_V2_BLOCK.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            out[f"blocks.{i}.{rest}"] = v
    for i, parts in qkv.items():
        for kind in ("weight", "bias"):
            if all(p + kind in parts for p in "qkv"):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[p + kind] for p in "qkv"], 0)
    return out


def _hf_dinov3_vit(sd: StateDict) -> StateDict:
    """transformers ``EomtDinov3ForUniversalSegmentation`` ViT -> ``DINOv3ViTModel`` names (which d2reg's
    DINOv3 reader takes): ``layers.N.`` -> ``layer.N.``, ``layernorm.`` -> ``norm.``."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("embeddings.") and k != "embeddings.mask_token":
            out[k] = v
        elif k.startswith("layers."):
            out["layer." + k[len("layers."):]] = v
        elif k.startswith("layernorm."):
            out["norm." + k[len("layernorm."):]] = v
    return out


def _heads(sd: StateDict, layout: str) -> StateDict:
    """The EoMT-level tensors under d2reg's ``EoMT`` names."""
    if layout == "lightning":
        return {k[len("network."):]: v for k, v in sd.items()
                if k.startswith("network.") and not k.startswith("network.encoder.")}
    out: StateDict = {}
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


def split_eomt_state_dict(sd: StateDict) -> Tuple[StateDict, StateDict, str, bool]:
    """An EoMT checkpoint -> ``(vit_sd, head_sd, layout, is_delta)``: the ViT in a layout d2reg's family
    pipeline reads (timm DINOv2, or transformers ``DINOv3ViTModel``), the head tensors under d2reg's
    ``EoMT`` names, and whether the file is a delta over the DINOv3 weights (the official DINOv3 Lightning
    releases; then add it with :func:`add_delta`)."""
    sd = {k.replace("._orig_mod", ""): v for k, v in sd.items() if not k.endswith(_DROPPED)}
    layout = detect_eomt_layout(sd)
    if layout is None:
        raise CheckpointError("not an EoMT checkpoint: no network.q.weight / network.encoder.backbone.* "
                              "(official Lightning) or query.weight + class_predictor.* (transformers) keys")
    dinov3 = _is_dinov3(sd, layout)
    if layout == "lightning":
        vit = _lightning_vit(sd, dinov3)
    else:
        vit = _hf_dinov3_vit(sd) if dinov3 else _hf_dinov2_vit(sd)
    return vit, _heads(sd, layout), layout, layout == "lightning" and dinov3


def add_delta(delta: StateDict, base: StateDict, what: str = "backbone") -> StateDict:
    """``base + delta`` key by key (same layout); a delta key missing from ``base`` or of another shape is
    a :class:`CheckpointError` (the base is not the model the delta was trained from)."""
    missing = sorted(set(delta) - set(base))
    if missing:
        raise CheckpointError(f"the base weights lack {len(missing)} of the EoMT delta's {what} tensors (first: "
                              f"{missing[:4]}): is it the DINOv3 model the EoMT checkpoint was trained from?")
    for k, v in delta.items():
        if tuple(base[k].shape) != tuple(v.shape):
            raise CheckpointError(f"EoMT delta {k}: shape {tuple(v.shape)}, base weights {tuple(base[k].shape)}: "
                                  "is it the DINOv3 model the EoMT checkpoint was trained from?")
    return {k: base[k].to(v.dtype) + v for k, v in delta.items()}


def delta_heads(head_sd: StateDict) -> StateDict:
    """Head tensors of a delta checkpoint -> their values (initial state: zeros, ``attn_mask_probs`` ones)."""
    return {k: v + 1 if k in _INITIAL_ONES else v for k, v in head_sd.items()}


def check_eomt_heads(head_sd: StateDict, model_sd: StateDict, where: str = "the EoMT checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the config key when the checkpoint's class, query or query-block
    counts differ from the model's."""
    checks = (
        ("class_head.weight", lambda n: n - 1, "classes", "MODEL.EOMT.NUM_CLASSES", "num_classes"),
        ("q.weight", lambda n: n, "queries", "MODEL.EOMT.NUM_QUERIES", "num_queries"),
        ("attn_mask_probs", lambda n: n, "query blocks", "MODEL.EOMT.NUM_BLOCKS", "num_blocks"),
    )
    for key, count, what, yacs, lazy in checks:
        if key in head_sd and key in model_sd:
            got, want = count(head_sd[key].shape[0]), count(model_sd[key].shape[0])
            if got != want:
                raise CheckpointError(f"{where} has {got} {what}, the model {want}: set {yacs} {got} "
                                      f"(LazyConfig: model.{lazy}={got}).")
