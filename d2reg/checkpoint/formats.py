"""Checkpoint layouts of DINOv2 ViTs: detection from keys, conversion to timm's layout, and the
architecture read back from tensor shapes. All functions here are pure (state dict in, out)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch

StateDict = Dict[str, torch.Tensor]

FORMATS = ("official", "timm", "hf", "detectron2")
HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
D2_PREFIX = "backbone.net.vit."  # a d2reg backbone inside detectron2's SimpleFeaturePyramid
DIM_TO_ARCH = {384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class CheckpointInfo:
    """What a checkpoint holds, read from its tensors."""

    format: str
    arch: Optional[str]  # "vit_small"... when embed_dim is a standard DINOv2 width, else None
    embed_dim: int
    depth: int
    patch_size: int
    num_register_tokens: int
    swiglu: bool
    pos_grid: int  # side of the stored position-embedding grid (37 for 518 px at patch 14)
    has_final_norm: bool
    path: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def unwrap_state_dict(obj) -> StateDict:
    """Strip the containers training scripts wrap weights in ({"model": ...}, {"state_dict": ...},
    DINOv2's {"teacher": {"backbone.*"}}, DDP's "module." prefix)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}.")
    for key in ("model", "state_dict", "teacher"):
        if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
            if key == "model" and any(k.startswith(D2_PREFIX) for k in obj[key]):
                return {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
            return unwrap_state_dict(obj[key])
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "backbone.patch_embed.proj.weight" in sd:  # DINOv2 training checkpoint (teacher/student)
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def detect_format(sd: StateDict) -> str:
    """Name the layout of ``sd``: "official", "timm", "hf" or "detectron2"."""
    keys = set(sd)
    if any(k.startswith(D2_PREFIX) for k in keys):
        return "detectron2"
    if any(k.endswith(HF_PATCH_KEY) for k in keys):
        return "hf"
    if "patch_embed.proj.weight" in keys and "cls_token" in keys:
        official = {"register_tokens", "mask_token"} & keys or any(".mlp.w12." in k for k in keys)
        # A register-free checkpoint without mask_token is the same in both layouts: call it timm.
        return "official" if official else "timm"
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        "unknown checkpoint layout: found none of the DINOv2 keys of the official (cls_token, "
        "register_tokens, blocks.N.*), timm (reg_token), Hugging Face (embeddings.patch_embeddings.*) "
        f"or d2reg detectron2 (backbone.net.vit.*) layouts. First keys: {sample}."
    )


def _strip_blocks_chunks(sd: StateDict) -> StateDict:
    # FSDP training checkpoints store blocks as blocks.<chunk>.<index>.*
    if not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in sd):
        return sd
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


def hf_to_official(sd: StateDict) -> StateDict:
    """Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` keys -> official DINOv2 keys.

    Takes the on-disk names (hub files, ``save_pretrained``: ``attention.attention.query``,
    ``mlp.weights_in``) and the in-memory names of transformers>=5 (``torch.save(model.state_dict())``:
    ``attention.q_proj``, ``attention.o_proj``, ``mlp.gate_proj/up_proj/down_proj``)."""
    prefix = next(k for k in sd if k.endswith(HF_PATCH_KEY))[: -len(HF_PATCH_KEY)]
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: StateDict = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    layer_renames = [
        ("attention.output.dense.", "attn.proj."),
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
        ("mlp.weights_in.", "mlp.w12."),
        ("mlp.weights_out.", "mlp.w3."),
        ("attention.o_proj.", "attn.proj."),  # transformers>=5 in-memory names
        ("mlp.down_proj.", "mlp.w3."),
    ]
    v5_qkv = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    w12: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", k)
        if not m:
            continue  # pooler / classifier heads are not part of the backbone
        i, rest = m.groups()
        qm = re.match(r"attention\.(?:attention\.(query|key|value)|(q_proj|k_proj|v_proj))\.(weight|bias)$", rest)
        if qm:
            qkv.setdefault(f"blocks.{i}.attn.qkv.{qm.group(3)}", {})[qm.group(1) or v5_qkv[qm.group(2)]] = v
            continue
        gm = re.match(r"mlp\.(gate_proj|up_proj)\.(weight|bias)$", rest)  # transformers>=5 SwiGLU halves
        if gm:
            w12.setdefault(f"blocks.{i}.mlp.w12.{gm.group(2)}", {})[gm.group(1)] = v
            continue
        for old, new in layer_renames:
            rest = rest.replace(old, new)
        out[f"blocks.{i}.{rest}"] = v
    for k, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"Hugging Face checkpoint lacks part of {k}: has only {sorted(parts)}.")
        out[k] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
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
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..modeling.vit import create_dinov2_vit

    sd = dict(_strip_blocks_chunks(sd))
    info = infer_info(sd, "official")
    # timm keys its DINOv2 conversion on the presence of mask_token; it is dropped again there.
    sd.setdefault("mask_token", torch.zeros(1, info.embed_dim))
    with torch.device("meta"):  # only shapes are read: no memory, no init cost
        model = create_dinov2_vit(
            _arch_for(info), info.num_register_tokens, info.patch_size,
            pretrain_img_size=info.pos_grid * 14,
        )
    return checkpoint_filter_fn(sd, model)


def _arch_for(info: CheckpointInfo):
    from ..modeling.vit import ViTArch

    return ViTArch(info.arch or "custom", info.embed_dim, info.depth, max(1, info.embed_dim // 64), info.swiglu)


def to_timm(sd: StateDict, fmt: str) -> StateDict:
    """Convert ``sd`` in layout ``fmt`` to timm's layout (patch size and grid unchanged)."""
    if fmt == "detectron2":
        return {k[len(D2_PREFIX):]: v for k, v in sd.items() if k.startswith(D2_PREFIX)}
    if fmt == "hf":
        return official_to_timm(hf_to_official(sd))
    if fmt == "official":
        return official_to_timm(sd)
    if fmt == "timm":
        return {k: v for k, v in _strip_blocks_chunks(sd).items() if not k.startswith("head.")}
    raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}.")


def infer_info(sd: StateDict, fmt: str) -> CheckpointInfo:
    """Read the architecture from tensor shapes of an official- or timm-layout state dict."""
    try:
        proj = sd["patch_embed.proj.weight"]
        sd["cls_token"]
        pos = sd["pos_embed"]
    except KeyError as e:
        raise CheckpointError(f"{fmt} checkpoint is missing {e.args[0]!r}: it is not a complete DINOv2 ViT.") from None
    embed_dim, patch_size = proj.shape[0], proj.shape[-1]
    regs = sd.get("register_tokens", sd.get("reg_token"))
    num_regs = 0 if regs is None else regs.shape[1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    swiglu = any(".mlp.w12." in k for k in sd)
    if not swiglu and "blocks.0.mlp.fc1.weight" in sd and "blocks.0.mlp.fc2.weight" in sd:
        # timm's packed SwiGLU: fc1 is twice as wide as fc2's input
        swiglu = sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * sd["blocks.0.mlp.fc2.weight"].shape[1]
    # official/HF (and timm register-free) keep the CLS position; timm register models do not
    num_pos = pos.shape[1] - (0 if (fmt == "timm" and num_regs > 0) else 1)
    grid = int(round(num_pos ** 0.5))
    if grid * grid != num_pos:
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows: not a square grid (+CLS) of patches.")
    return CheckpointInfo(
        format=fmt,
        arch=DIM_TO_ARCH.get(embed_dim),
        embed_dim=embed_dim,
        depth=depth,
        patch_size=patch_size,
        num_register_tokens=num_regs,
        swiglu=swiglu,
        pos_grid=grid,
        has_final_norm="norm.weight" in sd,
    )
