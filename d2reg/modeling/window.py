"""ViTDet-style windowed attention for DINOv2 ViTs, with the CLS and register tokens kept global.

``enable_window_attention(vit, window_size, window_block_indexes)`` switches the blocks listed in
``window_block_indexes`` to windowed attention and leaves the others global, exactly detectron2's
``ViT(window_size=..., window_block_indexes=...)`` meaning: the list names the WINDOWED blocks.
ViTDet's recipe (:func:`default_window_block_indexes`) keeps 4 evenly spaced global blocks: global at
2, 5, 8, 11 for 12-block models (window_block_indexes 0, 1, 3, 4, 6, 7, 9, 10), at 5, 11, 17, 23 for
24 blocks and 9, 19, 29, 39 for 40 blocks.

Prefix tokens (CLS + registers). ViTDet's ViT has none; DINOv2 has ``P = 1 + num_register_tokens``,
and its patch tokens rely on them (the registers are the attention sinks the model was trained
with). In a windowed block, d2reg computes:

- patch queries of a window attend to the keys/values of that window's patches PLUS the ``P``
  shared prefix tokens (the same ``P`` for every window, no copies that could drift apart);
- prefix queries attend globally to all ``P + h*w`` tokens, i.e. their update is exactly the one
  the unmodified (global) block computes; it costs ``P * (P + h*w)`` scores, nothing next to the
  windows;
- the MLP, norms and layer scales are the block's own, per token.

So the token sequence and the parameters stay those of the pre-trained model (``[CLS, reg..., patches]``,
same state-dict keys): DINOv2 weights load unchanged, global blocks run timm's attention untouched,
and with one window covering the whole grid a windowed block equals the global one exactly.
RF-DETR's DINOv2 backbone instead copies CLS + registers into every window; its global blocks then
see ``num_windows`` copies of every prefix token, which changes the softmax mass the pre-trained
sinks get, and the copies must be merged at the end. Sharing the prefix avoids both.

Padding and layout: windows, their order and the padding of the grid to a multiple of
``window_size`` are detectron2's ``window_partition`` order (:class:`d2reg.vit.windows.WindowGrid`,
token indices computed once per grid size and shared with DINOv3's windowed attention). Per
forward, one gather lays q/k/v out as windows of
``[prefix, patches]`` and one gather puts the outputs back, instead of padding, permuting and
concatenating the activations (fewer memory passes: on a 2-core CPU the copies cost more than the
windowed attention itself). The qkv projection runs on the real tokens only. Unlike detectron2, the
padded keys are masked out, so the output does not depend on the padding; grids that are a multiple
of the window need no mask.

The grid ``(h, w)`` is recorded by a forward hook on ``vit.patch_embed`` each time the ViT sees an
image. Activation checkpointing recomputes windowed blocks in the backward pass with the grid of the
last forward: do not interleave forwards of different image sizes before the backward (detectron2's
training loop never does; a mismatch in the token count raises).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..vit import resolve_block_indices
from ..vit.tracing import is_exporting
from ..vit.windows import WindowGrid, exportable_attn_mask

__all__ = ["WindowedAttention", "default_window_block_indexes", "enable_window_attention"]


def default_window_block_indexes(depth: int, num_global: int = 4) -> List[int]:
    """ViTDet's recipe: ``num_global`` evenly spaced global blocks ending with the last one (2, 5, 8,
    11 for depth 12; 5, 11, 17, 23 for 24; 9, 19, 29, 39 for 40; half the blocks for shallower models
    than ``2 * num_global``); returns the WINDOWED blocks."""
    num_global = max(1, min(num_global, depth // 2))
    global_blocks = {(i + 1) * depth // num_global - 1 for i in range(num_global)}
    return [i for i in range(depth) if i not in global_blocks]


class WindowedAttention(nn.Module):
    """timm ``Attention`` with windowed patch attention and global prefix tokens (see module doc).

    Takes over the submodules of the ``Attention`` it replaces (same names, so the same state-dict
    keys and the same parameters) and runs every attention product through
    ``F.scaled_dot_product_attention``.
    """

    def __init__(self, attn: nn.Module, window_size: int, num_prefix_tokens: int, grid: Optional[WindowGrid] = None):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError("windowed attention does not support gated attention")
        self.num_heads, self.head_dim, self.attn_dim = attn.num_heads, attn.head_dim, attn.attn_dim
        self.scale = attn.scale
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.attn_drop, self.norm, self.proj, self.proj_drop = attn.attn_drop, attn.norm, attn.proj, attn.proj_drop
        self.window_size = window_size
        self.num_prefix_tokens = num_prefix_tokens
        self._grid = grid if grid is not None else WindowGrid()  # shared per ViT by enable_window_attention

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, num_prefix_tokens={self.num_prefix_tokens}"

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise NotImplementedError("windowed attention takes no attention mask")
        B, N, C = x.shape
        P, ws, nh, hd = self.num_prefix_tokens, self.window_size, self.num_heads, self.head_dim
        h, w = self._grid.checked_hw(N, P)
        dropout_p = self.attn_drop.p if self.training else 0.0
        qkv = self.qkv(x)  # (B, N, 3 * attn_dim)

        # Prefix tokens: queries attend globally, exactly as in the unmodified block.
        q, k, v = qkv.reshape(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        out_prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v, dropout_p=dropout_p)

        # Patch tokens: windows of ws x ws patches, each also sees the P shared prefix keys/values.
        # One gather builds every window as [prefix, its patches] (padding included); no other copy.
        _, gather, back, mask, nw = self._grid.layout(ws, P, x.device)
        win = qkv.index_select(1, gather).view(B * nw, P + ws * ws, 3, nh, hd)
        qw = self.q_norm(win[:, P:, 0].transpose(1, 2))  # (B*nw, nh, ws*ws, hd)
        kw = self.k_norm(win[:, :, 1].transpose(1, 2))  # (B*nw, nh, P + ws*ws, hd)
        vw = win[:, :, 2].transpose(1, 2)
        if mask is not None:  # (nw, ...) -> (B*nw, ...); also for B == 1: no size test in a graph
            mask = mask.repeat(B, 1, 1, 1)
            if is_exporting():
                mask = exportable_attn_mask(mask, ws * ws, qkv.dtype)
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(B, nw * ws * ws, self.attn_dim).index_select(1, back)

        x = torch.cat([out_prefix.transpose(1, 2).reshape(B, P, self.attn_dim), out], dim=1)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


def enable_window_attention(vit: nn.Module, window_size: int, window_block_indexes: Sequence[int]) -> nn.Module:
    """Make the blocks ``window_block_indexes`` of a timm ``VisionTransformer`` (a DINOv2 ViT from
    :func:`d2reg.create_dinov2_vit`) use ``window_size`` x ``window_size`` windowed attention, in place.

    ``window_block_indexes`` lists the WINDOWED blocks (detectron2's ``ViT`` meaning); the others stay
    global. Negative indexes count from the end. Parameters and state-dict keys do not change, so
    DINOv2 weights load before or after. Returns ``vit``.
    """
    if window_size <= 0:
        return vit
    depth = len(vit.blocks)
    if not len(window_block_indexes):
        raise ValueError(
            f"window_size={window_size} but window_block_indexes is empty, so no block would be windowed. "
            f"ViTDet's recipe for {depth} blocks: window_block_indexes={default_window_block_indexes(depth)} "
            "(d2reg.modeling.window.default_window_block_indexes)."
        )
    take = resolve_block_indices(window_block_indexes, depth, "window_block_indexes")
    grid = getattr(vit, "_d2reg_window_grid", None)
    if grid is None:
        grid = WindowGrid()
        vit._d2reg_window_grid = grid

        def record_grid(module, inputs, output):  # patch_embed output: (B, h, w, C) with dynamic sizes
            grid.hw = (output.shape[1], output.shape[2])

        vit.patch_embed.register_forward_hook(record_grid)
    for j in take:
        blk = vit.blocks[j]
        if isinstance(blk.attn, WindowedAttention):
            blk.attn.window_size = window_size
        else:
            blk.attn = WindowedAttention(blk.attn, window_size, vit.num_prefix_tokens, grid)
    return vit
