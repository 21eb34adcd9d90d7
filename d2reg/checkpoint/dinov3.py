"""The DINOv3 family's checkpoint layouts: detection from keys, conversion to timm's ``Eva`` layout, the
architecture read back from tensor shapes, and the fit to a model. Pure functions (state dict in, out),
in the manner of timm's ``checkpoint_filter_fn(state_dict, model)``.

Layouts:

- "official" (``dinov3_vit*16*_pretrain_*.pth``): ``cls_token``, ``storage_tokens``, ``mask_token``,
  ``rope_embed.periods``, ``blocks.N.attn.qkv.{weight,bias,bias_mask}``, ``ls1.gamma``, ``mlp.fc1/fc2``
  or SwiGLU ``mlp.w1/w2/w3``; untied variants add ``cls_norm`` / ``local_cls_norm``;
- "timm" (``vit_*_patch16_dinov3[_qkvb]``, and what d2reg's ``Eva`` saves): ``reg_token``,
  ``blocks.N.gamma_1``, ``attn.q_bias`` / ``attn.v_bias`` (no K bias), ``mlp.fc1_g/fc1_x/fc2``, optionally
  d2reg's persistent ``rope.periods``;
- "hf" (transformers ``DINOv3ViTModel``; ``save_pretrained`` writes ``layer.N.``, an in-memory state dict
  has ``model.layer.N.``): ``embeddings.patch_embeddings.weight`` (a bare conv), ``embeddings.register_tokens``,
  ``attention.{q,k,v,o}_proj``, ``layer_scale{1,2}.lambda1``, ``mlp.{gate,up,down}_proj``.

What tells DINOv3 from DINOv2: DINOv3 has NO learned position table (RoPE). Every DINOv2 layout has
one (``pos_embed``, HF ``embeddings.position_embeddings``); this module never claims a state dict that
has one, and requires positive DINOv3 evidence besides (official: ``storage_tokens`` / ``rope_embed.*`` /
``bias_mask``; timm: Eva's ``gamma_1`` with ``reg_token`` or ``rope.periods``; HF: the bare-conv
``embeddings.patch_embeddings.weight``, which DINOv2's HF models hold as
``embeddings.patch_embeddings.projection.weight``).

Conventions: official -> timm goes through timm's own ``eva.checkpoint_filter_fn`` (on a meta-device
model of the checkpoint's shapes) after d2reg applies ``bias_mask`` (the K third must be masked: timm has
no K bias) and keeps the stored RoPE periods (``rope.periods``). HF has no K bias and no periods: they
become zero / the fp32 formula. ``cls_norm`` (untied CLS/register norm) and ``local_cls_norm``
(pre-training local crops only) are DROPPED: they only normalise the prefix tokens, which the dense
features never use (the patch tokens' final norm is ``norm``).
"""
from __future__ import annotations

import contextlib
import io
import re
from typing import Dict, Optional

import torch
from timm.models.eva import checkpoint_filter_fn as eva_checkpoint_filter_fn

from ..vit.dinov3 import (
    DINOV3_ARCHS,
    DINOV3_PATCH_SIZE,
    create_dinov3_vit,
    dinov3_rope_periods,
)
from .errors import CheckpointError, CheckpointInfo, StateDict, short_list

__all__ = [
    "FAMILY",
    "LAYOUTS",
    "checkpoint_info",
    "create_model",
    "detect_layout",
    "fit_to_model",
    "hf_to_timm",
    "infer_info",
    "official_to_timm",
    "timm_to_hf",
    "to_timm",
]

FAMILY = "dinov3"
LAYOUTS = ("official", "timm", "hf")

_POS_TABLE_KEYS = ("pos_embed", "embeddings.position_embeddings")
_HF_PATCH = "embeddings.patch_embeddings.weight"
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


# ------------------------------------------------------------------------------------ detection
def _has_pos_table(keys) -> bool:
    return any(k == p or k.endswith("." + p) for k in keys for p in _POS_TABLE_KEYS)


def _hf_prefix(keys) -> Optional[str]:
    """The prefix in front of ``embeddings.patch_embeddings.weight`` ('' for ``save_pretrained``)."""
    for k in keys:
        if k.endswith(_HF_PATCH) and (k == _HF_PATCH or k.endswith("." + _HF_PATCH)):
            return k[: -len(_HF_PATCH)]
    return None


def detect_layout(sd: StateDict) -> Optional[str]:
    """"official", "timm" or "hf" when ``sd`` is a DINOv3 ViT, else None (DINOv2 files included: they
    have a learned position table, DINOv3 has none)."""
    keys = set(sd)
    if _has_pos_table(keys):
        return None
    prefix = _hf_prefix(keys)
    if prefix is not None:
        has_layers = any(k.startswith(prefix + "layer.") or k.startswith(prefix + "model.layer.") for k in keys)
        return "hf" if has_layers and prefix + "embeddings.cls_token" in keys else None
    if not {"patch_embed.proj.weight", "cls_token"} <= keys:
        return None
    if "storage_tokens" in keys or "rope_embed.periods" in keys or any(k.endswith(".attn.qkv.bias_mask") for k in keys):
        return "official"
    if "blocks.0.ls1.gamma" in keys and "blocks.0.attn.qkv.weight" in keys:
        return "official"  # an official model without storage tokens / periods stripped: still no pos table
    if "blocks.0.gamma_1" in keys and "blocks.0.attn.qkv.weight" in keys and "rope.freqs" not in keys \
            and ("reg_token" in keys or "rope.periods" in keys):
        return "timm"  # storage tokens (or d2reg's stored periods): not timm's register-free RoPE ViTs
    return None


# ----------------------------------------------------------------------------------- conversion
def _official_shapes(sd: StateDict) -> dict:
    """create_dinov3_vit kwargs for an official-layout state dict (shapes only)."""
    dim = sd["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    swiglu = "blocks.0.mlp.w1.weight" in sd
    hidden = sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    heads = _num_heads(dim, sd.get("rope_embed.periods"))
    return dict(embed_dim=dim, depth=depth, num_heads=heads, swiglu=swiglu, mlp_hidden=hidden,
                qkv_bias="blocks.0.attn.qkv.bias" in sd,
                num_register_tokens=sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0,
                patch_size=sd["patch_embed.proj.weight"].shape[-1],
                final_norm="norm.weight" in sd)


def _meta_model(**shapes):
    """A DINOv3 ``Eva`` of the given shapes (``create_dinov3_vit`` kwargs) on the meta device."""
    return create_dinov3_vit("vit_small", device=torch.device("meta"), **shapes)


def _as_dict(info) -> dict:
    """:func:`infer_info`'s dict, or an object with those attributes (``CheckpointInfo``: ``swiglu``)."""
    d = dict(info) if isinstance(info, dict) else dict(vars(info))
    if "mlp" not in d and "swiglu" in d:
        d["mlp"] = "swiglu" if d["swiglu"] else "mlp"
    return d


def create_model(info, patch_size: int = DINOV3_PATCH_SIZE, **kwargs):
    """The randomly initialised DINOv3 ``Eva`` that ``info``'s checkpoint fits (all its blocks; call under
    ``torch.device("meta")`` when only shapes matter). ``info``: :func:`infer_info`'s dict or a
    ``CheckpointInfo``. DINOv3 is used at its own patch size (no patch-embedding resampling).
    ``kwargs`` go to :func:`create_dinov3_vit` (drop_path_rate, final_norm, rope options...)."""
    d = _as_dict(info)
    if patch_size != d["patch_size"]:
        raise CheckpointError(f"the DINOv3 checkpoint has patch size {d['patch_size']}; d2reg runs DINOv3 at its "
                              f"own patch size, not {patch_size}.")
    return create_dinov3_vit(d.get("arch") or "vit_small", embed_dim=d["embed_dim"], depth=d["depth"],
                             num_heads=d["num_heads"], swiglu=d["mlp"] == "swiglu", mlp_hidden=d["mlp_hidden"],
                             qkv_bias=d["qkv_bias"], num_register_tokens=d["num_register_tokens"],
                             patch_size=patch_size, **kwargs)


def _num_heads(embed_dim: int, periods: Optional[torch.Tensor] = None) -> int:
    if periods is not None and periods.numel() and embed_dim % (4 * periods.numel()) == 0:
        return embed_dim // (4 * periods.numel())  # periods: head_dim / 4 values
    for spec in DINOV3_ARCHS.values():
        if spec.embed_dim == embed_dim:
            return spec.num_heads
    return max(1, embed_dim // 64)


def official_to_timm(sd: StateDict) -> StateDict:
    """Official DINOv3 layout -> timm ``Eva`` layout (the checkpoint's own shapes)."""
    sd = dict(sd)
    for k in [k for k in sd if k.endswith("attn.qkv.bias")]:
        mask = sd.pop(k + "_mask", None)
        bias = sd[k]
        if mask is None:
            mask = torch.ones_like(bias)
            mask[bias.shape[0] // 3: 2 * bias.shape[0] // 3] = 0  # mask_k_bias, as every released model
        mask = mask.to(bias.dtype)
        if bias.is_meta or mask.is_meta:  # shapes only (read_state_dict(shapes_only=True))
            sd[k] = bias * mask
            continue
        if torch.isnan(mask).any():
            raise CheckpointError(f"{k}_mask holds NaN (an uninitialised official LinearKMaskedBias): "
                                  "the official model would compute NaN features from this file.")
        qm, km, vm = mask.chunk(3)
        kb = bias.chunk(3)[1]
        if bool((km * kb != 0).any()):
            raise CheckpointError(f"{k}: the checkpoint's K bias is active (bias_mask is not 0 on the K third); "
                                  "DINOv3 masks it and timm's Eva cannot hold a K bias.")
        sd[k] = bias * mask
    periods = sd.get("rope_embed.periods")
    sd = {k: v for k, v in sd.items() if not (k.startswith("cls_norm.") or k.startswith("local_cls_norm."))}
    shapes = _official_shapes(sd)
    model = _meta_model(**shapes)
    with contextlib.redirect_stdout(io.StringIO()):  # timm prints the missing q_bias of bias-free models
        out = eva_checkpoint_filter_fn(sd, model)
    if periods is not None:
        out["rope.periods"] = periods.float()
    return out


_HF_LAYER_RENAMES = [
    ("attention.o_proj.", "attn.proj."),
    ("layer_scale1.lambda1", "gamma_1"),
    ("layer_scale2.lambda1", "gamma_2"),
]


def hf_to_timm(sd: StateDict) -> StateDict:
    """Hugging Face ``DINOv3ViTModel`` layout -> timm ``Eva`` layout. No K bias (a nonzero
    ``k_proj.bias`` -- ``key_bias=True`` models -- cannot be represented and raises)."""
    prefix = _hf_prefix(sd)
    if prefix is None:
        raise CheckpointError("not a Hugging Face DINOv3ViTModel state dict (no embeddings.patch_embeddings.weight)")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: StateDict = {}
    emb = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "reg_token",
        "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
        "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    }
    layers: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in emb:
            out[emb[k]] = v
            continue
        m = re.match(r"^(?:model\.)?layer\.(\d+)\.(.*)$", k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
        # embeddings.mask_token (pre-training only) and anything else: dropped
    if "reg_token" in out and out["reg_token"].shape[1] == 0:
        del out["reg_token"]
    for i, p in sorted(layers.items()):
        b = f"blocks.{i}."
        out[b + "attn.qkv.weight"] = torch.cat([p["attention.q_proj.weight"], p["attention.k_proj.weight"],
                                                p["attention.v_proj.weight"]], 0)
        kb = p.get("attention.k_proj.bias")
        if kb is not None and not kb.is_meta and bool((kb != 0).any()):
            raise CheckpointError(f"layer.{i}.attention.k_proj.bias is nonzero (a key_bias=True model): DINOv3's "
                                  "K bias is masked and timm's Eva cannot hold one.")
        if "attention.q_proj.bias" in p:
            out[b + "attn.q_bias"] = p["attention.q_proj.bias"]
            out[b + "attn.v_bias"] = p["attention.v_proj.bias"]
        gated = "mlp.gate_proj.weight" in p
        mlp = ({"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"} if gated
               else {"up_proj": "fc1", "down_proj": "fc2"})
        for k, v in p.items():
            if k.startswith("attention.") and k.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                continue
            if k.startswith("mlp."):
                name, leaf = k[4:].split(".", 1)
                out[b + f"mlp.{mlp[name]}.{leaf}"] = v
                continue
            for a, c in _HF_LAYER_RENAMES:  # norm1 / norm2 keep their names
                if k.startswith(a):
                    k = c + k[len(a):]
                    break
            out[b + k] = v
    return out


def timm_to_hf(sd: StateDict) -> StateDict:
    """timm ``Eva`` layout -> the Hugging Face ``DINOv3ViTModel`` ``save_pretrained`` layout (``layer.N.``,
    no K bias; ``mask_token`` zero as HF initialises it; ``rope.periods`` dropped: HF computes them)."""
    out: StateDict = {}
    dim = sd["cls_token"].shape[-1]
    out["embeddings.cls_token"] = sd["cls_token"]
    out["embeddings.mask_token"] = torch.zeros(1, 1, dim, dtype=sd["cls_token"].dtype)
    if "reg_token" in sd:
        out["embeddings.register_tokens"] = sd["reg_token"]
    out["embeddings.patch_embeddings.weight"] = sd["patch_embed.proj.weight"]
    if "patch_embed.proj.bias" in sd:
        out["embeddings.patch_embeddings.bias"] = sd["patch_embed.proj.bias"]
    for k in ("norm.weight", "norm.bias"):
        if k in sd:
            out[k] = sd[k]
    for k, v in sd.items():
        m = _BLOCK_RE.match(k)
        if not m:
            continue
        b, rest = f"layer.{m.group(1)}.", k[m.end():]
        if rest == "attn.qkv.weight":
            q, kk, vv = v.chunk(3, 0)
            out[b + "attention.q_proj.weight"], out[b + "attention.k_proj.weight"] = q, kk
            out[b + "attention.v_proj.weight"] = vv
        elif rest == "attn.q_bias":
            out[b + "attention.q_proj.bias"] = v
        elif rest == "attn.v_bias":
            out[b + "attention.v_proj.bias"] = v
        elif rest.startswith("attn.proj."):
            out[b + "attention.o_proj." + rest[len("attn.proj."):]] = v
        elif rest in ("gamma_1", "gamma_2"):
            out[b + f"layer_scale{rest[-1]}.lambda1"] = v
        elif rest.startswith("mlp."):
            gated = f"blocks.{m.group(1)}.mlp.fc1_g.weight" in sd
            names = ({"fc1_g": "gate_proj", "fc1_x": "up_proj", "fc2": "down_proj"} if gated
                     else {"fc1": "up_proj", "fc2": "down_proj"})
            name, leaf = rest[4:].split(".", 1)
            out[b + f"mlp.{names[name]}.{leaf}"] = v
        else:
            out[b + rest] = v
    return out


def to_timm(sd: StateDict, layout: Optional[str]) -> StateDict:
    """A DINOv3 state dict in ``layout`` ("official" | "timm" | "hf", from :func:`detect_layout`) ->
    timm ``Eva`` layout at the checkpoint's own shapes (``rope.periods`` kept where the file has them)."""
    if layout == "official":
        return official_to_timm(sd)
    if layout == "hf":
        return hf_to_timm(sd)
    if layout == "timm":
        return {k: v for k, v in sd.items() if k not in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")}
    raise CheckpointError(f"not a DINOv3 layout: {layout!r} (expected one of {LAYOUTS})"
                          + (" -- this state dict has a learned position table, i.e. it is a DINOv2 model"
                             if _has_pos_table(sd) else ""))


# ------------------------------------------------------------------------------------ inference
def infer_info(timm_sd: StateDict) -> dict:
    """Architecture facts of a timm-layout DINOv3 state dict, from its tensor shapes: arch (the
    :data:`DINOV3_ARCHS` name when width + MLP kind + MLP width are standard, else None), embed_dim,
    depth, num_heads (from the periods when stored, else the table's value for a standard width, else
    embed_dim // 64), patch_size, num_register_tokens, mlp ("mlp" | "swiglu"), mlp_hidden, qkv_bias,
    has_final_norm."""
    if _has_pos_table(timm_sd) or "cls_token" not in timm_sd or "patch_embed.proj.weight" not in timm_sd:
        raise CheckpointError(_not_dinov3_message(timm_sd))
    dim = timm_sd["cls_token"].shape[-1]
    blocks = [int(m.group(1)) for k in timm_sd if (m := _BLOCK_RE.match(k))]
    depth = 1 + max(blocks) if blocks else 0
    swiglu = "blocks.0.mlp.fc1_g.weight" in timm_sd
    hidden_key = "blocks.0.mlp.fc1_g.weight" if swiglu else "blocks.0.mlp.fc1.weight"
    mlp_hidden = timm_sd[hidden_key].shape[0] if hidden_key in timm_sd else 0
    arch = None
    for name, spec in DINOV3_ARCHS.items():
        if spec.embed_dim == dim and spec.swiglu == swiglu and spec.mlp_hidden == mlp_hidden:
            arch = name
            break
    return dict(
        arch=arch,
        embed_dim=dim,
        depth=depth,
        num_heads=_num_heads(dim, timm_sd.get("rope.periods")),
        patch_size=timm_sd["patch_embed.proj.weight"].shape[-1],
        num_register_tokens=timm_sd["reg_token"].shape[1] if "reg_token" in timm_sd else 0,
        mlp="swiglu" if swiglu else "mlp",
        mlp_hidden=mlp_hidden,
        qkv_bias="blocks.0.attn.q_bias" in timm_sd,
        has_final_norm="norm.weight" in timm_sd,
    )


def checkpoint_info(timm_sd: StateDict, format: str = "timm", path: str = "") -> CheckpointInfo:
    """:func:`infer_info` as the pipeline's shared :class:`CheckpointInfo` (family "dinov3")."""
    d = infer_info(timm_sd)
    return CheckpointInfo(family=FAMILY, format=format, arch=d["arch"], embed_dim=d["embed_dim"], depth=d["depth"],
                          num_heads=d["num_heads"], patch_size=d["patch_size"],
                          num_register_tokens=d["num_register_tokens"], swiglu=d["mlp"] == "swiglu",
                          has_final_norm=d["has_final_norm"], pos_grid=None, qkv_bias=d["qkv_bias"],
                          mlp_hidden=d["mlp_hidden"], path=path)


def _not_dinov3_message(sd: StateDict) -> str:
    if _has_pos_table(sd):
        return ("this checkpoint is a DINOv2 ViT (it has a learned position table, pos_embed), but a DINOv3 "
                "model (RoPE, no position table) was asked for: use the DINOv2 backbone (family 'dinov2') "
                "or a DINOv3 file.")
    return f"not a DINOv3 ViT state dict (keys: {short_list(sorted(sd))})"


def _describe(info: dict) -> str:
    return (f"DINOv3 {info.get('arch') or 'custom'} (dim {info['embed_dim']}, {info['depth']} blocks, "
            f"{info['num_register_tokens']} storage tokens, {info['mlp']} {info['mlp_hidden']}, "
            f"qkv bias {info['qkv_bias']})")


def fit_to_model(timm_sd: StateDict, info_dict: dict, vit, **kwargs) -> StateDict:
    """The exact state dict of ``vit`` (a DINOv3 ``Eva``, possibly pruned: fewer blocks, maybe no final
    norm) from a timm-layout DINOv3 state dict and its :func:`infer_info` facts (the dict, or an object
    with those attributes such as ``CheckpointInfo``, whose ``swiglu`` stands for ``mlp``): checks width, storage
    tokens, MLP kind and width, qkv bias, patch size, depth >= the kept blocks, final norm, head count
    (when the periods are stored) with a :class:`CheckpointError` naming both sides; drops the pruned
    blocks; fills ``rope.periods`` from the formula when the file has none. Returns exactly
    ``vit.state_dict()``'s keys."""
    if _has_pos_table(timm_sd):
        raise CheckpointError(_not_dinov3_message(timm_sd))
    unknown = {k: v for k, v in kwargs.items() if k != "patch_resize"}  # DINOv2's option: nothing to resample
    if unknown:
        raise TypeError(f"DINOv3 fit_to_model got unexpected options {sorted(unknown)}")
    info = _as_dict(info_dict)
    target = vit.state_dict()
    blk0 = vit.blocks[0] if len(vit.blocks) else None
    model = dict(
        embed_dim=vit.embed_dim,
        num_register_tokens=vit.reg_token.shape[1] if vit.reg_token is not None else 0,
        mlp="swiglu" if blk0 is not None and hasattr(blk0.mlp, "fc1_g") else "mlp",
        mlp_hidden=(blk0.mlp.fc1_g if hasattr(blk0.mlp, "fc1_g") else blk0.mlp.fc1).out_features if blk0 else 0,
        qkv_bias=blk0 is not None and getattr(blk0.attn, "q_bias", None) is not None,
        patch_size=vit.patch_embed.proj.weight.shape[-1],
        num_heads=blk0.attn.num_heads if blk0 is not None else info["num_heads"],
    )
    arch_name = getattr(vit, "dinov3_arch", None) or "custom"
    problems = [f"{k}: checkpoint {info[k]} vs model {model[k]}" for k in
                ("embed_dim", "num_register_tokens", "mlp", "mlp_hidden", "qkv_bias", "patch_size")
                if info[k] != model[k]]
    if "rope.periods" in timm_sd and info["num_heads"] != model["num_heads"]:
        problems.append(f"num_heads: checkpoint {info['num_heads']} (from its RoPE periods) "
                        f"vs model {model['num_heads']}")
    if info["depth"] < len(vit.blocks):
        problems.append(f"depth: checkpoint {info['depth']} blocks, model keeps {len(vit.blocks)}")
    if "norm.weight" in target and not info["has_final_norm"]:
        problems.append("final norm: the model has one, the checkpoint none (build it with final_norm=False)")
    if problems:
        raise CheckpointError(f"checkpoint {_describe(info)} does not fit the DINOv3 {arch_name} model: "
                              + "; ".join(problems))
    out: StateDict = {}
    missing = []
    for k, t in target.items():
        if k in timm_sd:
            v = timm_sd[k]
        elif k == "rope.periods":
            v = dinov3_rope_periods(vit.embed_dim // model["num_heads"])
        else:
            missing.append(k)
            continue
        if tuple(v.shape) != tuple(t.shape):
            raise CheckpointError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, the DINOv3 {arch_name} "
                                  f"model expects {tuple(t.shape)}")
        out[k] = v
    if missing:
        raise CheckpointError(f"checkpoint {_describe(info)} lacks tensors of the DINOv3 {arch_name} model: "
                              f"{short_list(missing)}")
    return out

