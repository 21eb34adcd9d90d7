"""The DINOv2 family's checkpoint layouts: detection from keys, conversion to timm's layout, the
architecture read back from tensor shapes, and the fit to a model. Pure functions (state dict in, out),
in the manner of timm's ``checkpoint_filter_fn(state_dict, model)``.

Layouts: "official" (``dinov2_vit*14[_reg4]_pretrain.pth``: ``register_tokens``, ``mask_token``,
``pos_embed`` with the CLS position, ViT-g ``mlp.w12/w3``), "timm" (``reg_token``; register models keep
no CLS position) and "hf" (``Dinov2Model`` / ``Dinov2WithRegistersModel``). What tells DINOv2 from
DINOv3: a learned position table (``pos_embed`` / ``embeddings.position_embeddings``); DINOv3 has RoPE.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from ..vit import (
    DINOV2_ARCHS,
    PRETRAIN_PATCH_SIZE,
    ViTArch,
    arch_for_width,
    create_dinov2_vit,
    heads_for_width,
    resize_patch_embed_weight,
)
from .errors import CheckpointError, CheckpointInfo, StateDict, short_list

__all__ = [
    "FAMILY",
    "checkpoint_info",
    "HF_EMBEDDING_KEYS",
    "HF_LAYER_RENAMES",
    "LAYOUTS",
    "create_model",
    "detect_layout",
    "fit_to_model",
    "hf_to_official",
    "infer_info",
    "official_to_timm",
    "to_timm",
]

FAMILY = "dinov2"
LAYOUTS = ("official", "timm", "hf")
HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"

# Hugging Face on-disk names -> official names (DESIGN.md's table; verified with save_pretrained).
HF_EMBEDDING_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Inside ``encoder.layer.N.`` -> inside ``blocks.N.`` (q/k/v are concatenated separately).
HF_LAYER_RENAMES = [
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.w12."),
    ("mlp.weights_out.", "mlp.w3."),
]
HF_QKV = ("query", "key", "value")
# transformers>=5 in-memory names (``torch.save(model.state_dict())``), read but never written.
_HF_V5_RENAMES = [("attention.o_proj.", "attn.proj."), ("mlp.down_proj.", "mlp.w3.")]
_HF_V5_QKV = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


# ------------------------------------------------------------------------------------ detection
def detect_layout(sd: StateDict) -> Optional[str]:
    """"official", "timm" or "hf" when ``sd`` is a DINOv2 ViT, else None."""
    keys = set(sd)
    if any(k.endswith(HF_PATCH_KEY) for k in keys):
        return "hf" if any(k.endswith("embeddings.position_embeddings") for k in keys) else None
    if not {"patch_embed.proj.weight", "cls_token"} <= keys:
        return None
    if "pos_embed" not in keys and ({"storage_tokens", "rope_embed.periods", "rope.periods"} & keys
                                    or "blocks.0.gamma_1" in keys):
        return None  # DINOv3 (RoPE, no position table; timm's Eva names LayerScale gamma_1)
    official = {"register_tokens", "mask_token"} & keys or any(".mlp.w12." in k for k in keys)
    # A register-free checkpoint without mask_token is the same in both layouts: call it timm.
    return "official" if official else "timm"


# ----------------------------------------------------------------------------------- conversion
def _strip_blocks_chunks(sd: StateDict) -> StateDict:
    # FSDP training checkpoints store blocks as blocks.<chunk>.<index>.*
    if not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in sd):
        return sd
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


def hf_to_official(sd: StateDict) -> StateDict:
    """Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` keys -> official DINOv2 keys.

    Takes the on-disk names (hub files, ``save_pretrained``: ``attention.attention.query``,
    ``mlp.weights_in``) and the in-memory names of transformers>=5 (``attention.q_proj``,
    ``attention.o_proj``, ``mlp.gate_proj/up_proj/down_proj``)."""
    prefix = next(k for k in sd if k.endswith(HF_PATCH_KEY))[: -len(HF_PATCH_KEY)]
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: StateDict = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    w12: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in HF_EMBEDDING_KEYS:
            out[HF_EMBEDDING_KEYS[k]] = v
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", k)
        if not m:
            continue  # pooler / classifier heads are not part of the backbone
        i, rest = m.groups()
        qm = re.match(r"attention\.(?:attention\.(query|key|value)|(q_proj|k_proj|v_proj))\.(weight|bias)$", rest)
        if qm:
            qkv.setdefault(f"blocks.{i}.attn.qkv.{qm.group(3)}", {})[qm.group(1) or _HF_V5_QKV[qm.group(2)]] = v
            continue
        gm = re.match(r"mlp\.(gate_proj|up_proj)\.(weight|bias)$", rest)  # transformers>=5 SwiGLU halves
        if gm:
            w12.setdefault(f"blocks.{i}.mlp.w12.{gm.group(2)}", {})[gm.group(1)] = v
            continue
        for old, new in HF_LAYER_RENAMES + _HF_V5_RENAMES:
            rest = rest.replace(old, new)
        out[f"blocks.{i}.{rest}"] = v
    for k, parts in qkv.items():
        if set(parts) != set(HF_QKV):
            raise CheckpointError(f"Hugging Face checkpoint lacks part of {k}: has only {sorted(parts)}.")
        out[k] = torch.cat([parts[n] for n in HF_QKV], dim=0)
    for k, parts in w12.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise CheckpointError(f"Hugging Face checkpoint lacks part of {k}: has only {sorted(parts)}.")
        out[k] = torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0)  # w12 = [x1 (silu), x2]
    return out


def official_to_timm(sd: StateDict) -> StateDict:
    """Official DINOv2 keys -> timm's layout, at the checkpoint's own patch size and grid.

    Uses timm's own conversion (inside ``checkpoint_filter_fn``): with registers it folds
    ``pos_embed[:, 0]`` into ``cls_token`` and renames ``register_tokens`` -> ``reg_token``; it
    renames SwiGLU ``w12/w3`` -> ``fc1/fc2`` and drops ``mask_token``.
    """
    sd = dict(_strip_blocks_chunks(sd))
    info = infer_info(sd, "official")
    # timm keys its DINOv2 conversion on the presence of mask_token; it is dropped again there.
    sd.setdefault("mask_token", torch.zeros(1, info.embed_dim, device=sd["cls_token"].device))
    with torch.device("meta"):  # only shapes are read: no memory, no init cost
        model = create_model(info, patch_size=info.patch_size, pretrain_img_size=info.pos_grid * PRETRAIN_PATCH_SIZE)
    return checkpoint_filter_fn(sd, model)


def to_timm(sd: StateDict, layout: str) -> StateDict:
    """Convert ``sd`` in ``layout`` ("official", "timm", "hf") to timm's layout (patch size and grid
    unchanged)."""
    if layout == "hf":
        return official_to_timm(hf_to_official(sd))
    if layout == "official":
        return official_to_timm(sd)
    if layout == "timm":
        return {k: v for k, v in _strip_blocks_chunks(sd).items() if not k.startswith("head.")}
    raise CheckpointError(f"unknown DINOv2 layout {layout!r}; expected one of {LAYOUTS}.")


# --------------------------------------------------------------------------------- architecture
def infer_info(sd: StateDict, layout: str = "timm") -> CheckpointInfo:
    """The architecture of an official- or timm-layout DINOv2 state dict, from tensor shapes."""
    try:
        proj, pos = sd["patch_embed.proj.weight"], sd["pos_embed"]
        sd["cls_token"]
    except KeyError as e:
        raise CheckpointError(
            f"{layout} checkpoint is missing {e.args[0]!r}: it is not a complete DINOv2 ViT."
        ) from None
    embed_dim, patch_size = proj.shape[0], proj.shape[-1]
    regs = sd.get("register_tokens", sd.get("reg_token"))
    num_regs = 0 if regs is None else regs.shape[1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    swiglu = any(".mlp.w12." in k for k in sd)
    if not swiglu and "blocks.0.mlp.fc1.weight" in sd and "blocks.0.mlp.fc2.weight" in sd:
        # timm's packed SwiGLU: fc1 is twice as wide as fc2's input
        swiglu = sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * sd["blocks.0.mlp.fc2.weight"].shape[1]
    # official/HF (and timm register-free) keep the CLS position; timm register models do not
    num_pos = pos.shape[1] - (0 if (layout == "timm" and num_regs > 0) else 1)
    grid = int(round(num_pos ** 0.5))
    if grid * grid != num_pos:
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows: not a square grid (+CLS) of patches.")
    return CheckpointInfo(
        family=FAMILY,
        format=layout,
        arch=arch_for_width(embed_dim, swiglu, DINOV2_ARCHS),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads_for_width(embed_dim, DINOV2_ARCHS),
        patch_size=patch_size,
        num_register_tokens=num_regs,
        swiglu=swiglu,
        has_final_norm="norm.weight" in sd,
        pos_grid=grid,
        qkv_bias="blocks.0.attn.qkv.bias" in sd or depth == 0,
    )


def checkpoint_info(sd: StateDict, format: str = "timm", path: str = "") -> CheckpointInfo:
    """:func:`infer_info` of a timm-layout state dict, recording the layout it came from and its file."""
    info = infer_info(sd, "timm")
    info.format, info.path = format, path
    return info


def create_model(info: CheckpointInfo, patch_size: int = 16, **kwargs):
    """The randomly initialised timm ViT that ``info``'s checkpoint fits (all its blocks; call under
    ``torch.device("meta")`` when only shapes matter). ``kwargs`` go to :func:`create_dinov2_vit`
    (its ``pretrain_img_size`` defaults to 518, as :class:`d2reg.DINOv2Backbone`'s does)."""
    spec = ViTArch(info.arch or "custom", info.embed_dim, info.depth, info.num_heads, info.swiglu)
    return create_dinov2_vit(spec, info.num_register_tokens, patch_size, **kwargs)


# ------------------------------------------------------------------------------------------ fit
def _model_info(vit: torch.nn.Module) -> CheckpointInfo:
    return infer_info({k: v for k, v in vit.state_dict().items()}, "timm")


def _mismatches(ckpt: CheckpointInfo, model: CheckpointInfo) -> List[str]:
    problems, name = [], model.arch or "custom"
    if ckpt.embed_dim != model.embed_dim:
        problems.append(f"checkpoint has embed_dim {ckpt.embed_dim} ({ckpt.arch or 'custom'}), config asks for "
                        f"{name} ({model.embed_dim})")
    if ckpt.num_register_tokens != model.num_register_tokens:
        problems.append(f"checkpoint has {ckpt.num_register_tokens} register tokens, config asks for "
                        f"num_register_tokens={model.num_register_tokens}")
    if ckpt.swiglu != model.swiglu:
        problems.append(f"checkpoint MLP is {'SwiGLU' if ckpt.swiglu else 'GELU'}, config {name} uses "
                        f"{'SwiGLU' if model.swiglu else 'GELU'} (SwiGLU: arch vit_giant2)")
    if not problems and ckpt.depth < model.depth:
        problems.append(f"checkpoint has {ckpt.depth} blocks, the model uses {model.depth}")
    if model.has_final_norm and not ckpt.has_final_norm:
        problems.append("final_norm=True but the checkpoint has no final norm (norm.*)")
    return problems


def fit_to_model(sd: StateDict, info: CheckpointInfo, vit: torch.nn.Module, patch_resize: str = "pi") -> StateDict:
    """timm-layout DINOv2 tensors -> the exact state dict of ``vit`` (a possibly pruned d2reg
    DINOv2 ViT): checks the architecture, resamples the patch embedding to the model's patch size
    (``patch_resize`` "pi" or "bicubic") and the position embedding to its stored grid, and drops
    blocks, head and final norm the model pruned. Raises :class:`CheckpointError` on any mismatch."""
    problems = _mismatches(info, _model_info(vit))
    if problems:
        raise CheckpointError(
            f"checkpoint {info.path or '(in memory)'!r} does not match the backbone: " + "; ".join(problems)
            + ". Fix the config (arch / num_register_tokens) or pass the matching checkpoint."
        )
    sd = dict(sd)
    patch = vit.patch_embed.proj.weight.shape[-1]
    sd["patch_embed.proj.weight"] = resize_patch_embed_weight(sd["patch_embed.proj.weight"], patch, patch_resize)
    sd = checkpoint_filter_fn(sd, vit)  # resamples pos_embed to the model's stored grid
    own = vit.state_dict()
    unexpected = [k for k in sd if k not in own and not _is_pruned_key(k, len(vit.blocks))]
    missing = [k for k in own if k not in sd]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {info.path or '(in memory)'!r} ({info.format} layout) does not fit the model: missing "
            f"{short_list(missing)}, unexpected {short_list(unexpected)}, wrong shapes {short_list(shapes)}."
        )
    return {k: sd[k] for k in own}


def _is_pruned_key(key: str, kept_blocks: int) -> bool:
    if key.startswith(("norm.", "head.", "fc_norm.", "mask_token")):
        return True
    if key.startswith("blocks."):
        return int(key.split(".")[1]) >= kept_blocks
    return False


def split_qkv_for_hf(name: str, value: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """The inverse of the q/k/v concatenation: ``blocks.N.attn.qkv.weight`` -> three HF tensors."""
    i, leaf = name.split(".")[1], name.rsplit(".", 1)[1]
    return [(f"encoder.layer.{i}.attention.attention.{n}.{leaf}", part) for n, part in zip(HF_QKV, value.chunk(3, 0))]
