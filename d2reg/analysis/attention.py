"""Last-block attention maps of the CLS token and of each register (DINOv3: storage token), computed explicitly.

The model keeps its fused attention (``F.scaled_dot_product_attention``) for normal use and is not
modified: a forward pre-hook on the last block's ``attn`` records that module's inputs (the tokens
after ``norm1`` and, for DINOv3's timm ``EvaAttention``, the ``rope`` embedding the block passes)
during one ordinary forward pass and is removed again; the attention probabilities are then
recomputed from those inputs with the module's own weights exactly as its forward does:

- timm ``Attention`` (DINOv2): ``qkv`` projection, ``q_norm`` / ``k_norm``, ``softmax(q k^T * scale)``;
- timm ``EvaAttention`` (DINOv3): ``qkv`` with the ``q_bias`` / zero ``k_bias`` / ``v_bias`` (or the
  separate ``q/k/v_proj``), ``q_norm`` / ``k_norm``, then RoPE on the PATCH tokens' q and k only (the
  first ``num_prefix_tokens``, CLS + storage, are not rotated; ``apply_rot_embed_cat`` with the
  module's ``rotate_half`` layout), then ``softmax(q k^T * scale)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .common import AnalysisModel, InputImage, to_tensor

__all__ = ["AttentionMaps", "attention_probs", "attention_maps", "attention_qkv", "last_block_attention"]


@dataclass
class AttentionMaps:
    """Attention of the prefix tokens to the patches in the last block (probabilities; each full
    row, prefix tokens included, sums to 1). For DINOv3 ``registers`` are the storage tokens."""

    name: str
    cls: np.ndarray  # (heads, rows, cols)
    registers: np.ndarray  # (registers, heads, rows, cols)
    prefix_mass: np.ndarray  # (1 + registers, heads, 1 + registers): attention of each prefix row to CLS/registers


def _is_eva(attn: torch.nn.Module) -> bool:
    return hasattr(attn, "q_bias") and hasattr(attn, "rotate_half")


def attention_qkv(attn: torch.nn.Module, x: torch.Tensor, rope: Optional[torch.Tensor] = None):
    """(B, N, C) input of a timm ``Attention`` or ``EvaAttention`` (+ the ``rope`` its block passes) ->
    q, k, v of shape (B, heads, N, head_dim) as the module's forward feeds them to its attention
    kernel (after q/k norm and, for ``EvaAttention``, RoPE on the patch tokens)."""
    if getattr(attn, "window_size", 0):  # d2reg's WindowedAttention / DINOv3WindowedAttention
        raise NotImplementedError("attention probabilities of a windowed block: build the model without "
                                  "window_size (the diagnostics do) to see its global attention")
    B, N, _ = x.shape
    heads = attn.num_heads
    if not _is_eva(attn):  # timm Attention (DINOv2)
        qkv = attn.qkv(x).reshape(B, N, 3, heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        return attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    from timm.layers import apply_rot_embed_cat

    if attn.qkv is not None:
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        q = attn.q_proj(x).reshape(B, N, heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(B, N, heads, -1).transpose(1, 2)
        v = attn.v_proj(x).reshape(B, N, heads, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    return q, k, v


def attention_probs(attn: torch.nn.Module, x: torch.Tensor, rope: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, N, C) input of a timm ``Attention`` / ``EvaAttention`` (+ the block's ``rope`` for DINOv3) ->
    (B, heads, N, N) attention probabilities, with the module's own weights (what its fused kernel
    computes internally)."""
    q, k, _ = attention_qkv(attn, x, rope)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


@torch.inference_mode()
def last_block_attention(model: AnalysisModel, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """(B, 3, H, W) -> (B, heads, N, N) attention probabilities of ``block`` (default the last),
    tokens ordered ``[CLS, registers / storage tokens..., patches (row-major)]``."""
    attn = model.vit.blocks[block].attn
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["x"]
        seen["rope"] = kwargs.get("rope", args[1] if len(args) > 1 else None)

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.vit.forward_intermediates(x, indices=[block % model.depth], stop_early=True, intermediates_only=True)
    finally:
        handle.remove()
    return attention_probs(attn, seen["x"], seen["rope"])


def attention_maps(model: AnalysisModel, image: InputImage, block: int = -1) -> AttentionMaps:
    """CLS and register (storage) rows of the last block's attention, to the patches, per head."""
    rows, cols = model.grid(*image.size)
    probs = last_block_attention(model, to_tensor(image, model.device), block)[0]  # (heads, N, N)
    P = model.num_prefix_tokens
    to_patches = probs[:, :P, P:].reshape(probs.shape[0], P, rows, cols).transpose(0, 1)  # (P, heads, rows, cols)
    mass = probs[:, :P, :P].transpose(0, 1)  # (P, heads, P)
    to_patches, mass = to_patches.cpu().numpy(), mass.cpu().numpy()
    return AttentionMaps(image.name, to_patches[0], to_patches[1:], mass)
