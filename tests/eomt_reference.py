"""An independent reference of the official EoMT forward (tue-mps/eomt ``models/eomt.py``), in plain
tensor functions on state dicts, run in float64. Written from the official semantics, not from
d2reg's model or timm's blocks:

- tokens ``[CLS, registers, patches]`` (DINOv2: position embeddings added to the patches, and to the
  CLS token when the table holds its row; DINOv3: no table, RoPE on the patch tokens' q and k);
- at block ``depth - num_blocks`` the ``Q`` query embeddings are prepended: ``[queries, CLS, regs,
  patches]``; before each later block (masked attention on) the final norm, then the class head
  (linear, C + 1) and the mask head (Linear, GELU, Linear, GELU, Linear) on the queries; mask logits
  ``einsum("qc,chw->qhw")`` with the patch tokens upscaled by the ScaleBlocks (ConvTranspose 2x2
  stride 2, GELU, depthwise 3x3 without bias, LayerNorm over channels, eps 1e-6);
- the block's attention mask: everything attends everything, except query -> patch pairs, allowed
  only where the query's mask logits, bilinearly resized to the patch grid, are > 0; when the block's
  keep probability is below 1, ``torch.rand(N, Q) > prob`` (drawn in that order, one draw per block)
  selects queries that see every patch;
- after the last block the final norm and the heads again: the final prediction, last in the lists.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from dinov3_reference import _attention as _dinov3_attention
from dinov3_reference import _ffn as _dinov3_ffn
from dinov3_reference import _layer_norm as _dinov3_layer_norm
from dinov3_reference import rope_sin_cos

StateDict = Dict[str, torch.Tensor]
# block(tokens (N, T, D), block index, attn_mask (N, 1, T, T) bool or None, num_prefix) -> tokens
BlockFn = Callable[[torch.Tensor, int, Optional[torch.Tensor], int], torch.Tensor]


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _lin(x: torch.Tensor, sd: StateDict, name: str) -> torch.Tensor:
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


# ----------------------------------------------------------------------------------- the ViTs
def dinov2_timm_vit(sd: StateDict, num_heads: int, eps: float = 1e-6):
    """(embed(images) -> (tokens, (h, w)), block fn, final norm fn) for a DINOv2 ViT in timm's names
    (``patch_embed.proj``, ``cls_token``, ``reg_token``, ``pos_embed``, ``blocks.i.{norm1, attn.qkv,
    attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``). The image's patch grid must be
    the stored position grid (no interpolation)."""

    def embed(images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        w = sd["patch_embed.proj.weight"]
        t = F.conv2d(images, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
        h, wd = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        n, pos = t.shape[0], sd["pos_embed"]
        cls = sd["cls_token"].expand(n, -1, -1)
        if pos.shape[1] == h * wd + 1:
            cls, t = cls + pos[:, :1], t + pos[:, 1:]
        else:
            assert pos.shape[1] == h * wd, "the image's patch grid must be the stored position grid"
            t = t + pos
        regs = [sd["reg_token"].expand(n, -1, -1)] if "reg_token" in sd else []
        return torch.cat([cls, *regs, t], 1), (h, wd)

    def attention(x: torch.Tensor, b: str, mask: Optional[torch.Tensor]) -> torch.Tensor:
        n, t, d = x.shape
        hd = d // num_heads
        q, k, v = _lin(x, sd, b + "attn.qkv").reshape(n, t, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, -1) @ v
        return _lin(out.transpose(1, 2).reshape(n, t, d), sd, b + "attn.proj")

    def block(x: torch.Tensor, i: int, mask: Optional[torch.Tensor], num_prefix: int) -> torch.Tensor:
        b = f"blocks.{i}."
        x = x + sd[b + "ls1.gamma"] * attention(_ln(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps), b, mask)
        h = F.gelu(_lin(_ln(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps), sd, b + "mlp.fc1"))
        return x + sd[b + "ls2.gamma"] * _lin(h, sd, b + "mlp.fc2")

    def norm(x: torch.Tensor) -> torch.Tensor:
        return _ln(x, sd["norm.weight"], sd["norm.bias"], eps)

    return embed, block, norm


def dinov3_official_vit(sd: StateDict, num_heads: int):
    """The same triple for an official-layout DINOv3 state dict (tests/dinov3_reference.py's functions):
    RoPE rotates the last ``h * w`` tokens (the patches), whatever precedes them."""
    grid = {}

    def embed(images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        w = sd["patch_embed.proj.weight"]
        t = F.conv2d(images, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
        grid["hw"] = t.shape[-2:]
        grid["sin_cos"] = rope_sin_cos(sd["rope_embed.periods"], *t.shape[-2:])
        t = t.flatten(2).transpose(1, 2)
        n = t.shape[0]
        return torch.cat([sd["cls_token"].expand(n, -1, -1), sd["storage_tokens"].expand(n, -1, -1), t], 1), tuple(
            grid["hw"])

    def block(x: torch.Tensor, i: int, mask: Optional[torch.Tensor], num_prefix: int) -> torch.Tensor:
        b = f"blocks.{i}."
        sin, cos = grid["sin_cos"]
        a = _dinov3_attention(_dinov3_layer_norm(x, sd, b + "norm1"), sd, b, num_heads, sin, cos, num_prefix, mask)
        x = x + sd[b + "ls1.gamma"] * a
        return x + sd[b + "ls2.gamma"] * _dinov3_ffn(_dinov3_layer_norm(x, sd, b + "norm2"), sd, b)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return _dinov3_layer_norm(x, sd, "norm")

    return embed, block, norm


# ----------------------------------------------------------------------------------- EoMT
def _heads(x: torch.Tensor, heads: StateDict, num_q: int, num_prefix: int, grid: Tuple[int, int]):
    q = x[:, :num_q]
    class_logits = _lin(q, heads, "class_head")
    m = _lin(F.gelu(_lin(F.gelu(_lin(q, heads, "mask_head.0")), heads, "mask_head.2")), heads, "mask_head.4")
    p = x[:, num_q + num_prefix:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
    k = 0
    while f"upscale.{k}.conv1.weight" in heads:
        u = f"upscale.{k}."
        p = F.gelu(F.conv_transpose2d(p, heads[u + "conv1.weight"], heads[u + "conv1.bias"], stride=2))
        p = F.conv2d(p, heads[u + "conv2.weight"], None, padding=1, groups=p.shape[1])
        p = _ln(p.permute(0, 2, 3, 1), heads[u + "norm.weight"], heads[u + "norm.bias"], 1e-6).permute(0, 3, 1, 2)
        k += 1
    return torch.einsum("nqc,nchw->nqhw", m, p), class_logits


def eomt_reference_forward(
    vit, heads: StateDict, images: torch.Tensor, depth: int, num_blocks: int,
    attn_mask_probs: Sequence[float], masked_attn: bool = True, dtype: torch.dtype = torch.float64,
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The official forward on normalised ``images`` (N, 3, H, W) -> (mask logits per prediction
    (N, Q, 4h, 4w), class logits per prediction (N, Q, C + 1)). ``vit`` is one of the triples above
    (built on ``dtype`` tensors), ``heads`` the EoMT state dict's ``q``, ``class_head``, ``mask_head``
    and ``upscale`` entries."""
    embed, block, norm = vit
    heads = {k: v.to(dtype) for k, v in heads.items()}
    x, grid = embed(images.to(dtype))
    num_q = heads["q.weight"].shape[0]
    num_prefix = x.shape[1] - grid[0] * grid[1]
    start = depth - num_blocks
    masks, classes = [], []
    for i in range(depth):
        mask = None
        if i == start:
            x = torch.cat([heads["q.weight"][None].expand(x.shape[0], -1, -1), x], 1)
        prefix = num_prefix + (num_q if i >= start else 0)
        if masked_attn and i >= start:
            m, c = _heads(norm(x), heads, num_q, num_prefix, grid)
            masks.append(m)
            classes.append(c)
            t = x.shape[1]
            mask = torch.ones(x.shape[0], t, t, dtype=torch.bool)
            mask[:, :num_q, num_q + num_prefix:] = F.interpolate(m, grid, mode="bilinear").flatten(2) > 0
            prob = float(attn_mask_probs[i - start])
            if prob < 1:
                free = torch.rand(x.shape[0], num_q) > prob
                mask[:, :num_q, num_q + num_prefix:][free] = True
            mask = mask[:, None]
        x = block(x, i, mask, prefix)
    m, c = _heads(norm(x), heads, num_q, num_prefix, grid)
    return masks + [m], classes + [c]
