"""An independent reference of the official DINOv3 ViT forward, on an official-layout state dict.

Written from the semantics of ``facebookresearch/dinov3`` (``DinoVisionTransformer``,
``RopePositionEmbedding``, ``SelfAttention`` with ``LinearKMaskedBias``, ``SelfAttentionBlock``,
``LayerScale``, ``Mlp`` / ``SwiGLUFFN``), not a copy of its code and not timm's: plain tensor functions,
explicit softmax attention, run in float64 by default. Used by ``tests/test_dinov3.py``.

Semantics reproduced:

- tokens ``[CLS, storage x n, patches]`` (patches from a stride-``p`` conv, row-major);
- RoPE: patch centres ``(i + 0.5) / H`` and ``(j + 0.5) / W`` ("separate" normalisation), mapped to
  [-1, 1]; angles ``2 pi c / periods`` for the (y, x) axes concatenated (head_dim / 2 values), the list
  repeated twice; ``x * cos + rotate_half(x) * sin`` on the patch tokens' q and k only; the periods are
  the state dict's ``rope_embed.periods`` (the official model uses the stored buffer);
- qkv bias multiplied by ``bias_mask`` (K third 0 in the released models);
- pre-norm blocks with LayerScale: ``x + ls1 * attn(norm1(x))``, then ``+ ls2 * ffn(norm2(x))``;
  MLP ``fc2(gelu(fc1 x))`` (exact GELU), SwiGLU ``w3(silu(w1 x) * w2 x)``; LayerNorm eps 1e-5;
- ``get_intermediate_layers(x, n, reshape=True, norm=False)``: the outputs of the chosen blocks,
  prefix tokens dropped, as (B, C, H/p, W/p); ``norm=True`` applies the final ``norm`` (the patch
  tokens' norm also in the untied-``cls_norm`` variants).

Also the test helpers that build random official checkpoints and their Hugging Face form.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Union

import torch

StateDict = Dict[str, torch.Tensor]

# the official hub shapes: (embed_dim, depth, heads, ffn_ratio, ffn_layer, qkv_bias)
OFFICIAL_SHAPES = {
    "vit_small": (384, 12, 6, 4.0, "mlp", True),
    "vit_small_plus": (384, 12, 6, 6.0, "swiglu", True),
    "vit_base": (768, 12, 12, 4.0, "mlp", True),
    "vit_large": (1024, 24, 16, 4.0, "mlp", True),
    "vit_huge_plus": (1280, 32, 20, 6.0, "swiglu", True),
    "vit_7b": (4096, 40, 32, 3.0, "swiglu64", False),
}
LN_EPS = 1e-5


def official_ffn_hidden(embed_dim: int, ffn_ratio: float, ffn_layer: str) -> int:
    """Hidden width of the official Mlp / SwiGLUFFN (``swiglu`` aligns to 8, ``swiglu64`` to 64)."""
    hidden = int(embed_dim * ffn_ratio)
    if ffn_layer == "mlp":
        return hidden
    align = 8 if ffn_layer == "swiglu" else int(ffn_layer[len("swiglu"):])
    d = int(hidden * 2 / 3)
    return d + (-d % align)


def official_periods(head_dim: int, base: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    """``RopePositionEmbedding._init_weights`` with ``base``: ``base ** (2 i / (D_head / 2))``."""
    i = torch.arange(head_dim // 4, dtype=torch.float64)
    return (base ** (2 * i / (head_dim // 2))).to(dtype)


# --------------------------------------------------------------------------------- random files
def random_official_dinov3_state_dict(
    arch: str = "vit_small",
    seed: int = 0,
    *,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    ffn_ratio: Optional[float] = None,
    ffn_layer: Optional[str] = None,
    qkv_bias: Optional[bool] = None,
    n_storage_tokens: int = 4,
    patch_size: int = 16,
    untie_cls_norm: bool = False,
    untie_local_cls_norm: bool = False,
    periods_dtype: torch.dtype = torch.float32,
    k_bias_scale: float = 1.0,
) -> StateDict:
    """A random state dict in the official DINOv3 layout (``dinov3_vit*16*_pretrain_*.pth`` keys), every
    parameter randomised: LayerScale near 1, LayerNorm affines near (1, 0), nonzero q/k/v biases (the K
    bias ``k_bias_scale`` x larger; ``bias_mask`` 1/0/1 makes it inert), ``rope_embed.periods`` of the
    base-100 schedule stored in ``periods_dtype`` (bf16 like the released files, fp32 by default).
    Shapes from the official hub table, overridden by the keyword arguments that are not None."""
    dim0, depth0, heads0, ratio0, ffn0, bias0 = OFFICIAL_SHAPES[arch]
    dim = embed_dim or dim0
    depth = depth or depth0
    heads = num_heads or (heads0 if dim == dim0 else max(1, dim // 64))
    ratio = ffn_ratio or ratio0
    ffn = ffn_layer or ffn0
    bias = bias0 if qkv_bias is None else qkv_bias
    hidden = official_ffn_hidden(dim, ratio, ffn)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def lin(out_f, in_f, name, sd, with_bias=True):
        sd[name + ".weight"] = rnd(out_f, in_f, scale=in_f ** -0.5)
        if with_bias:
            sd[name + ".bias"] = rnd(out_f, scale=0.1)

    def ln(name, sd):
        sd[name + ".weight"] = 1.0 + rnd(dim, scale=0.1)
        sd[name + ".bias"] = rnd(dim, scale=0.1)

    sd: StateDict = {}
    sd["cls_token"] = rnd(1, 1, dim, scale=0.5)
    if n_storage_tokens:
        sd["storage_tokens"] = rnd(1, n_storage_tokens, dim, scale=0.5)
    sd["mask_token"] = rnd(1, dim, scale=0.1)
    sd["patch_embed.proj.weight"] = rnd(dim, 3, patch_size, patch_size, scale=(3 * patch_size ** 2) ** -0.5)
    sd["patch_embed.proj.bias"] = rnd(dim, scale=0.1)
    sd["rope_embed.periods"] = official_periods(dim // heads, dtype=periods_dtype)
    for i in range(depth):
        b = f"blocks.{i}."
        ln(b + "norm1", sd)
        lin(3 * dim, dim, b + "attn.qkv", sd, with_bias=bias)
        if bias:
            sd[b + "attn.qkv.bias"][dim: 2 * dim] *= k_bias_scale * 10
            mask = torch.ones(3 * dim)
            mask[dim: 2 * dim] = 0
            sd[b + "attn.qkv.bias_mask"] = mask
        lin(dim, dim, b + "attn.proj", sd)
        sd[b + "ls1.gamma"] = 1.0 + rnd(dim, scale=0.1)
        ln(b + "norm2", sd)
        if ffn == "mlp":
            lin(hidden, dim, b + "mlp.fc1", sd)
            lin(dim, hidden, b + "mlp.fc2", sd)
        else:
            lin(hidden, dim, b + "mlp.w1", sd)
            lin(hidden, dim, b + "mlp.w2", sd)
            lin(dim, hidden, b + "mlp.w3", sd)
        sd[b + "ls2.gamma"] = 1.0 + rnd(dim, scale=0.1)
    ln("norm", sd)
    if untie_cls_norm:
        ln("cls_norm", sd)
    if untie_local_cls_norm:
        ln("local_cls_norm", sd)
    return sd


def official_to_hf(sd: StateDict) -> StateDict:
    """The official tensors under ``DINOv3ViTModel``'s in-memory names (DESIGN.md's table): q/k/v split
    from qkv (no K bias: masked), ``ls{1,2}.gamma`` -> ``layer_scale{1,2}.lambda1``, MLP ``fc1/fc2`` ->
    ``up_proj/down_proj``, SwiGLU ``w1/w2/w3`` -> ``gate_proj/up_proj/down_proj``."""
    out: StateDict = {}
    dim = sd["cls_token"].shape[-1]
    out["embeddings.cls_token"] = sd["cls_token"]
    out["embeddings.mask_token"] = sd["mask_token"].reshape(1, 1, dim)
    out["embeddings.register_tokens"] = sd.get("storage_tokens", torch.zeros(1, 0, dim))
    out["embeddings.patch_embeddings.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.bias"] = sd["patch_embed.proj.bias"]
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    mlp_names = {"fc1": "up_proj", "fc2": "down_proj", "w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
        if not m:
            continue
        b, rest = f"model.layer.{m.group(1)}.", m.group(2)
        if rest == "attn.qkv.weight":
            for name, t in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, 0)):
                out[b + f"attention.{name}.weight"] = t
        elif rest == "attn.qkv.bias":
            q, _, vb = (v * sd[k + "_mask"]).chunk(3, 0)
            out[b + "attention.q_proj.bias"], out[b + "attention.v_proj.bias"] = q, vb
        elif rest == "attn.qkv.bias_mask":
            continue
        elif rest.startswith("attn.proj."):
            out[b + "attention.o_proj." + rest.split(".")[-1]] = v
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[b + f"layer_scale{rest[2]}.lambda1"] = v
        elif rest.startswith("mlp."):
            _, name, leaf = rest.split(".")
            out[b + f"mlp.{mlp_names[name]}.{leaf}"] = v
        else:
            out[b + rest] = v
    return out


# ----------------------------------------------------------------------------------- the forward
def _layer_norm(x, sd, name, eps=LN_EPS):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _linear(x, sd, name, bias=True):
    y = x @ sd[name + ".weight"].T
    if bias and name + ".bias" in sd:
        b = sd[name + ".bias"]
        if name + ".bias_mask" in sd:
            b = b * sd[name + ".bias_mask"]
        y = y + b
    return y


def rope_sin_cos(periods: torch.Tensor, H: int, W: int):
    """(sin, cos), each (H*W, head_dim): the official inference RoPE for an H x W patch grid."""
    dt = periods.dtype
    ys = 2.0 * (torch.arange(H, dtype=dt) + 0.5) / H - 1.0
    xs = 2.0 * (torch.arange(W, dtype=dt) + 0.5) / W - 1.0
    coords = torch.stack([ys[:, None].expand(H, W), xs[None, :].expand(H, W)], -1).reshape(H * W, 2)
    angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).reshape(H * W, -1)  # (HW, D/2)
    angles = torch.cat([angles, angles], -1)
    return torch.sin(angles), torch.cos(angles)


def _rotate(x, sin, cos):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def _attention(x, sd, b, num_heads, sin, cos, num_prefix, attn_mask=None):
    B, N, C = x.shape
    hd = C // num_heads
    qkv = _linear(x, sd, b + "attn.qkv").reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = torch.cat([q[:, :, :num_prefix], _rotate(q[:, :, num_prefix:], sin, cos)], 2)
    k = torch.cat([k[:, :, :num_prefix], _rotate(k[:, :, num_prefix:], sin, cos)], 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return _linear(out.transpose(1, 2).reshape(B, N, C), sd, b + "attn.proj")


def _ffn(x, sd, b):
    if b + "mlp.w1.weight" in sd:
        h = torch.nn.functional.silu(_linear(x, sd, b + "mlp.w1")) * _linear(x, sd, b + "mlp.w2")
        return _linear(h, sd, b + "mlp.w3")
    h = torch.nn.functional.gelu(_linear(x, sd, b + "mlp.fc1"))
    return _linear(h, sd, b + "mlp.fc2")


def num_heads_of(sd: StateDict) -> int:
    """Heads from the stored periods (head_dim / 4 of them)."""
    return sd["cls_token"].shape[-1] // (4 * sd["rope_embed.periods"].numel())


def get_intermediate_layers(
    sd: StateDict,
    x: torch.Tensor,
    n: Union[int, Sequence[int]] = 1,
    *,
    norm: bool = False,
    num_heads: Optional[int] = None,
    dtype: torch.dtype = torch.float64,
    attn_masks: Optional[Dict[int, torch.Tensor]] = None,
) -> List[torch.Tensor]:
    """The official ``get_intermediate_layers(x, n=n, reshape=True, norm=norm)``: per chosen block its
    patch tokens as (B, C, H/p, W/p), computed in ``dtype``. ``H, W`` must be multiples of the patch
    size (pad first). ``attn_masks`` {block: (N, N) bool, True = may attend} turns the listed blocks into
    explicitly masked attention (the windowed-attention reference)."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    x = x.to(dtype)
    heads = num_heads or num_heads_of(sd)
    p = sd["patch_embed.proj.weight"].shape[-1]
    B, _, Hi, Wi = x.shape
    assert Hi % p == 0 and Wi % p == 0, "pad the image to the patch size first"
    H, W = Hi // p, Wi // p
    t = torch.nn.functional.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    t = t.flatten(2).transpose(1, 2)  # (B, HW, C), row-major
    prefix = [sd["cls_token"].expand(B, -1, -1)]
    if "storage_tokens" in sd:
        prefix.append(sd["storage_tokens"].expand(B, -1, -1))
    t = torch.cat(prefix + [t], 1)
    P = t.shape[1] - H * W
    sin, cos = rope_sin_cos(sd["rope_embed.periods"], H, W)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    take = list(range(depth - n, depth)) if isinstance(n, int) else [i % depth for i in n]
    outs = []
    for i in range(depth):
        b = f"blocks.{i}."
        mask = None if attn_masks is None else attn_masks.get(i)
        t = t + sd[b + "ls1.gamma"] * _attention(_layer_norm(t, sd, b + "norm1"), sd, b, heads, sin, cos, P, mask)
        t = t + sd[b + "ls2.gamma"] * _ffn(_layer_norm(t, sd, b + "norm2"), sd, b)
        if i in take:
            outs.append(t)
    if norm:
        outs = [_layer_norm(o, sd, "norm") for o in outs]
    return [o[:, P:].reshape(B, H, W, -1).permute(0, 3, 1, 2) for o in outs]


def window_attention_mask(H: int, W: int, window_size: int, num_prefix: int) -> torch.Tensor:
    """(P + HW, P + HW) bool, True = query may attend key: prefix queries attend everything; a patch
    query attends the prefix tokens and the patches of its window (windows of ``window_size`` patches
    tiling the grid from the top-left; the last row/column of windows may be cut by the grid edge,
    i.e. padded keys do not exist)."""
    wy = torch.arange(H)[:, None].expand(H, W).reshape(-1) // window_size
    wx = torch.arange(W)[None, :].expand(H, W).reshape(-1) // window_size
    win = wy * ((W + window_size - 1) // window_size) + wx
    N = num_prefix + H * W
    m = torch.zeros(N, N, dtype=torch.bool)
    m[:num_prefix] = True
    m[:, :num_prefix] = True
    m[num_prefix:, num_prefix:] = win[:, None] == win[None, :]
    return m
