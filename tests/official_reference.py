"""An independent, compact re-implementation of the official DINOv2 forward pass (plain torch).

Mirrors facebookresearch/dinov2 ``dinov2/models/vision_transformer.py`` (``DinoVisionTransformer``)
and ``dinov2/layers`` (``PatchEmbed``, ``Attention``, ``Mlp``, ``SwiGLUFFNFused``, ``LayerScale``,
``NestedTensorBlock``), reading the state dict by the official key names. It shares no code with
d2reg or timm, so the layout tests compare d2reg against the real formula rather than against
itself.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

EPS = 1e-6  # official: partial(nn.LayerNorm, eps=1e-6)


def _ln(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], EPS)


def _linear(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def interpolate_pos_encoding(sd, x, w, h, patch_size, interpolate_offset, interpolate_antialias):
    """``DinoVisionTransformer.interpolate_pos_encoding``; note the official names: ``w`` is the
    image height (dim 2) and ``h`` the width (dim 3), from ``B, nc, w, h = x.shape``."""
    previous_dtype = x.dtype
    npatch = x.shape[1] - 1
    pos_embed_full = sd["pos_embed"]
    N = pos_embed_full.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed_full
    pos_embed = pos_embed_full.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    M = int(math.sqrt(N))
    assert N == M * M
    kwargs = {}
    if interpolate_offset:
        sx = float(w0 + interpolate_offset) / M
        sy = float(h0 + interpolate_offset) / M
        kwargs["scale_factor"] = (sx, sy)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=interpolate_antialias,
        **kwargs,
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def _attention(x, sd, prefix, num_heads):
    B, N, C = x.shape
    qkv = _linear(x, sd, prefix + ".qkv").reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    scale = (C // num_heads) ** -0.5
    q, k, v = qkv[0] * scale, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return _linear(x, sd, prefix + ".proj")


def _mlp(x, sd, prefix):
    if prefix + ".w12.weight" in sd:  # SwiGLUFFNFused
        x1, x2 = _linear(x, sd, prefix + ".w12").chunk(2, dim=-1)
        return _linear(F.silu(x1) * x2, sd, prefix + ".w3")
    return _linear(F.gelu(_linear(x, sd, prefix + ".fc1")), sd, prefix + ".fc2")


def official_forward(sd: Dict[str, torch.Tensor], img: torch.Tensor, num_heads: int, norm: bool = False):
    """All output tokens ``[CLS, registers, patches]`` of the last block (``norm``: after the final
    LayerNorm), for an official-layout state dict ``sd`` and an image whose sides are multiples of
    the patch size. The interpolation variant follows the official hub models: with registers
    ``interpolate_antialias=True, interpolate_offset=0.0``; without ``False, 0.1``."""
    regs = sd.get("register_tokens")
    antialias, offset = (True, 0.0) if regs is not None else (False, 0.1)
    w_patch = sd["patch_embed.proj.weight"]
    patch_size = w_patch.shape[-1]
    # prepare_tokens_with_masks
    B, nc, w, h = img.shape
    x = F.conv2d(img, w_patch, sd["patch_embed.proj.bias"], stride=patch_size).flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + interpolate_pos_encoding(sd, x, w, h, patch_size, offset, antialias)
    if regs is not None:
        x = torch.cat((x[:, :1], regs.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}"
        x = x + sd[b + ".ls1.gamma"] * _attention(_ln(x, sd, b + ".norm1"), sd, b + ".attn", num_heads)
        x = x + sd[b + ".ls2.gamma"] * _mlp(_ln(x, sd, b + ".norm2"), sd, b + ".mlp")
    return _ln(x, sd, "norm") if norm else x


def official_patch_tokens(sd, img, num_heads, norm=False) -> torch.Tensor:
    """Patch tokens as (B, C, H/p, W/p), i.e. after dropping the 1 + R prefix tokens."""
    R = 0 if sd.get("register_tokens") is None else sd["register_tokens"].shape[1]
    p = sd["patch_embed.proj.weight"].shape[-1]
    tokens = official_forward(sd, img, num_heads, norm)[:, 1 + R:]
    B, _, H, W = img.shape
    return tokens.transpose(1, 2).reshape(B, -1, H // p, W // p)
