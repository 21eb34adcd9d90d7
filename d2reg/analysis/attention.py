"""Last-block attention maps of the CLS token and of each register, computed explicitly.

The model keeps its fused attention (``F.scaled_dot_product_attention``) for normal use and is not
modified: a forward pre-hook on the last block's ``attn`` records that module's input (the tokens
after ``norm1``) during one ordinary forward pass and is removed again; the attention probabilities
are then recomputed from that input with the block's own ``qkv`` projection, ``q_norm`` /
``k_norm`` and ``scale``: ``softmax(q k^T * scale)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import AnalysisModel, InputImage, to_tensor

__all__ = ["AttentionMaps", "attention_probs", "attention_maps", "last_block_attention"]


@dataclass
class AttentionMaps:
    """Attention of the prefix tokens to the patches in the last block (probabilities; each full
    row, prefix tokens included, sums to 1)."""

    name: str
    cls: np.ndarray  # (heads, rows, cols)
    registers: np.ndarray  # (registers, heads, rows, cols)
    prefix_mass: np.ndarray  # (1 + registers, heads, 1 + registers): attention of each prefix row to CLS/registers


def attention_probs(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) input of a timm ``Attention`` -> (B, heads, N, N) attention probabilities, with
    the module's own weights (what its fused kernel computes internally)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


@torch.inference_mode()
def last_block_attention(model: AnalysisModel, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """(B, 3, H, W) -> (B, heads, N, N) attention probabilities of ``block`` (default the last),
    tokens ordered ``[CLS, registers..., patches (row-major)]``."""
    attn = model.vit.blocks[block].attn
    seen = {}

    def grab(module, args):
        seen["x"] = args[0]

    handle = attn.register_forward_pre_hook(grab)
    try:
        model.vit.forward_intermediates(x, indices=[block % model.depth], stop_early=True, intermediates_only=True)
    finally:
        handle.remove()
    return attention_probs(attn, seen["x"])


def attention_maps(model: AnalysisModel, image: InputImage, block: int = -1) -> AttentionMaps:
    """CLS and register rows of the last block's attention, to the patches, per head."""
    rows, cols = model.grid(*image.size)
    probs = last_block_attention(model, to_tensor(image, model.device), block)[0]  # (heads, N, N)
    P = model.num_prefix_tokens
    to_patches = probs[:, :P, P:].reshape(probs.shape[0], P, rows, cols).transpose(0, 1)  # (P, heads, rows, cols)
    mass = probs[:, :P, :P].transpose(0, 1)  # (P, heads, P)
    to_patches, mass = to_patches.cpu().numpy(), mass.cpu().numpy()
    return AttentionMaps(image.name, to_patches[0], to_patches[1:], mass)
