"""DINOv3 ViTs as timm ``Eva`` models, and windowed attention for them (torch and timm only).

timm 1.0.31 already has the DINOv3 ViT: ``Eva`` with ``rope_type="dinov3"`` (its
``vit_*_patch16_dinov3[_qkvb]`` models). :func:`create_dinov3_vit` builds that class with the official
shapes (:data:`DINOV3_ARCHS`, checked against the official ``dinov3/hub/backbones.py`` and timm's
model functions) and the official inference semantics:

- token order ``[CLS, storage x4, patches]``; RoPE rotates the patch tokens' q and k only;
- RoPE as ``RopePositionEmbedding`` computes it in eval mode: patch centres normalised per axis
  ("separate"), mapped to [-1, 1], periods ``100 ** (2i / (head_dim / 2))``, rotate-half layout. The
  pre-training coordinate augmentations (the hub models set ``rescale_coords=2``; they only act in
  training mode) are OFF by default here, so fine-tuning sees the eval-time RoPE; pass
  ``rope_shift`` / ``rope_jitter`` / ``rope_rescale`` to turn them on (they act in ``train()`` mode);
- the RoPE ``periods`` are a PERSISTENT buffer (``rope.periods``), unlike timm's: the official
  checkpoints store their periods (timm notes they were saved bf16-rounded) and the official model uses
  the stored values, so d2reg loads them instead of recomputing (HF and timm recompute in fp32);
- LayerNorm eps 1e-5, LayerScale, SwiGLU ``silu(w1 x) * w2 x`` (timm ``fc1_g`` / ``fc1_x``);
- the official qkv bias has its K third masked to zero (``bias_mask``): timm keeps ``k_bias`` as a zero
  non-persistent buffer, so no K bias can be loaded;
- any input size: ``dynamic_img_size`` + ``dynamic_img_pad`` (zero padding at the bottom / right to a
  multiple of 16, as detectron2 pads), features of shape ``(N, C, ceil(H/16), ceil(W/16))`` from
  ``forward_intermediates(..., output_fmt="NCHW")`` (the 1 + 4 prefix tokens dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm, RotaryEmbeddingDinoV3, apply_rot_embed_cat
from timm.models._manipulate import reinit_non_persistent_buffers
from timm.models.eva import Eva, EvaAttention

from .arch import resolve_block_indices
from .patch_embed import exportable_patch_embed
from .tracing import is_exporting
from .windows import WindowGrid, exportable_attn_mask

__all__ = [
    "DINOV3_ARCHS",
    "DINOV3_PATCH_SIZE",
    "DINOV3_ROPE_BASE",
    "DINOv3Arch",
    "DINOv3RotaryEmbedding",
    "DINOv3WindowedAttention",
    "create_dinov3_vit",
    "dinov3_rope_periods",
    "enable_dinov3_window_attention",
    "get_dinov3_arch",
    "materialize_dinov3_vit",
]

DINOV3_PATCH_SIZE = 16
DINOV3_ROPE_BASE = 100.0
DINOV3_NUM_STORAGE_TOKENS = 4
DINOV3_LN_EPS = 1e-5


@dataclass(frozen=True)
class DINOv3Arch:
    """Shape of a DINOv3 ViT. ``ffn_ratio`` and ``swiglu_align_to`` are the official ones: an MLP has
    ``int(dim * ffn_ratio)`` hidden units, SwiGLU ``int(dim * ffn_ratio * 2 / 3)`` rounded up to
    ``swiglu_align_to`` (:attr:`mlp_hidden`)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False
    ffn_ratio: float = 4.0
    swiglu_align_to: int = 8
    qkv_bias: bool = True
    timm_name: str = ""  # timm's model function with the same shape

    @property
    def mlp_hidden(self) -> int:
        if not self.swiglu:
            return int(self.embed_dim * self.ffn_ratio)
        d = int(self.embed_dim * self.ffn_ratio * 2 / 3)
        return d + (-d % self.swiglu_align_to)

    def replace(self, **overrides) -> DINOv3Arch:
        values = {k: v for k, v in overrides.items() if v is not None}
        return DINOv3Arch(**{**self.__dict__, **values})


# Official hub functions (dinov3_vits16, vits16plus, vitb16, vitl16, vith16plus, vit7b16) and the
# timm functions they match. Every model: patch 16, 4 storage tokens, LayerScale 1e-5, LN eps 1e-5.
DINOV3_ARCHS: Dict[str, DINOv3Arch] = {
    "vit_small": DINOv3Arch("vit_small", 384, 12, 6, timm_name="vit_small_patch16_dinov3_qkvb"),
    "vit_small_plus": DINOv3Arch("vit_small_plus", 384, 12, 6, swiglu=True, ffn_ratio=6.0,
                                 timm_name="vit_small_plus_patch16_dinov3_qkvb"),
    "vit_base": DINOv3Arch("vit_base", 768, 12, 12, timm_name="vit_base_patch16_dinov3_qkvb"),
    "vit_large": DINOv3Arch("vit_large", 1024, 24, 16, timm_name="vit_large_patch16_dinov3_qkvb"),
    "vit_huge_plus": DINOv3Arch("vit_huge_plus", 1280, 32, 20, swiglu=True, ffn_ratio=6.0,
                                timm_name="vit_huge_plus_patch16_dinov3_qkvb"),
    "vit_7b": DINOv3Arch("vit_7b", 4096, 40, 32, swiglu=True, ffn_ratio=3.0, swiglu_align_to=64,
                         qkv_bias=False, timm_name="vit_7b_patch16_dinov3"),
}


def get_dinov3_arch(arch: Union[str, DINOv3Arch], **overrides) -> DINOv3Arch:
    """Look ``arch`` up in :data:`DINOV3_ARCHS`; overrides that are not None (embed_dim, depth,
    num_heads, swiglu, ffn_ratio, qkv_bias...) replace the table's values (tiny test models)."""
    if isinstance(arch, DINOv3Arch):
        spec = arch.replace(**overrides)
    elif arch in DINOV3_ARCHS:
        spec = DINOV3_ARCHS[arch].replace(**overrides)
    else:
        raise ValueError(f"Unknown DINOv3 arch {arch!r}: choose one of {sorted(DINOV3_ARCHS)}.")
    if spec.embed_dim % spec.num_heads or (spec.embed_dim // spec.num_heads) % 4:
        raise ValueError(f"DINOv3 embed_dim {spec.embed_dim} with {spec.num_heads} heads: the head dim must be "
                         "an integer multiple of 4 (RoPE splits it in 2 axes x sin/cos).")
    return spec


def dinov3_rope_periods(head_dim: int, base: float = DINOV3_ROPE_BASE) -> torch.Tensor:
    """The official ``RopePositionEmbedding`` periods in fp32: ``base ** (2 i / (head_dim / 2))``."""
    n = head_dim // 4
    return base ** (2 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))


class DINOv3RotaryEmbedding(RotaryEmbeddingDinoV3):
    """timm's DINOv3 RoPE with ``periods`` persistent (loaded from the checkpoint, as the official model
    does) and never recomputed behind the caller's back: casting the model to a low precision keeps the
    loaded periods (upcast back to fp32) instead of timm's rebuild from the temperature."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        periods = self._buffers.pop("periods")
        self._non_persistent_buffers_set.discard("periods")
        self.register_buffer("periods", periods, persistent=True)

    def init_non_persistent_buffers(self) -> None:
        """Rebuild only what is derived (a cached grid embedding); the periods are state, not derived."""
        if self.feat_shape is not None:
            self._cache_embed(self.feat_shape)

    def _create_embed(self, feat_shape, no_aug: bool = False) -> torch.Tensor:
        """(h*w, 4 * (head_dim // 4)) ``[sin, cos]`` for the grid ``feat_shape``: timm's, or while exporting
        the same numbers from the grid size as a graph value (timm's ``float(h)`` and
        ``arange(0.5, h)`` would pin an exported graph to the traced size)."""
        if not is_exporting():
            return super()._create_embed(feat_shape, no_aug)
        if self.grid_indexing != "ij" or self.normalize_coords != "separate":
            raise NotImplementedError("export supports DINOv3's RoPE grid only (ij indexing, separate normalisation)")
        axes = [(torch.arange(n).to(torch.float32) + (0.5 + self.grid_offset)) / torch.full((), n, dtype=torch.float32)
                for n in feat_shape]  # patch centres in [0, 1] per axis
        coords = 2.0 * torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1) - 1.0  # (h, w, 2) in [-1, 1]
        sin, cos = self._get_pos_embed_from_coords(coords.flatten(0, 1))
        return torch.cat([sin, cos], dim=-1)

    def _apply(self, fn, recurse: bool = True):
        module = nn.Module._apply(self, fn, recurse)
        p = self._buffers.get("periods")
        if p is not None and p.is_floating_point() and p.dtype not in (torch.float32, torch.float64):
            self._buffers["periods"] = p.float()
        return module


def _hidden_ratio(hidden: int, embed_dim: int) -> float:
    """An ``mlp_ratio`` for which timm's ``int(embed_dim * ratio)`` is exactly ``hidden``."""
    return (hidden + 0.5) / embed_dim


def create_dinov3_vit(
    arch: Union[str, DINOv3Arch] = "vit_small",
    *,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    swiglu: Optional[bool] = None,
    mlp_hidden: Optional[int] = None,
    qkv_bias: Optional[bool] = None,
    num_register_tokens: int = DINOV3_NUM_STORAGE_TOKENS,
    patch_size: int = DINOV3_PATCH_SIZE,
    drop_path_rate: float = 0.0,
    layer_scale_init: Optional[float] = 1e-5,
    final_norm: bool = True,
    rope_base: float = DINOV3_ROPE_BASE,
    rope_shift: Optional[float] = None,
    rope_jitter: Optional[float] = None,
    rope_rescale: Optional[float] = None,
    **kwargs,
) -> Eva:
    """A DINOv3 ViT: timm's ``Eva`` with the DINOv3 settings of its ``vit_*_patch16_dinov3_qkvb`` models
    and the shape of ``arch`` (overridden by the keyword arguments that are not None: a checkpoint's
    own shapes, tiny test models). No classifier (``num_classes=0``), any input size (dynamic size,
    bottom/right zero padding to the patch multiple).

    ``mlp_hidden`` is the MLP's hidden width (SwiGLU: each of ``w1``/``w2``), default from the arch.
    ``rope_shift`` / ``rope_jitter`` / ``rope_rescale`` are the pre-training RoPE coordinate
    augmentations (official ``shift_coords`` / ``jitter_coords`` / ``rescale_coords``, active only in
    training mode); None (default) = off. ``final_norm=False`` builds no final LayerNorm. Other
    ``kwargs`` go to ``Eva`` (e.g. ``device``, ``dtype``).
    """
    if embed_dim is not None and num_heads is None and not isinstance(arch, DINOv3Arch) \
            and arch in DINOV3_ARCHS and embed_dim != DINOV3_ARCHS[arch].embed_dim:
        num_heads = max(1, embed_dim // 64)  # a custom width: head dim 64, as every DINOv3 model
    spec = get_dinov3_arch(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, swiglu=swiglu,
                           qkv_bias=qkv_bias)
    hidden = mlp_hidden if mlp_hidden is not None else spec.mlp_hidden
    device = kwargs.get("device")
    vit = Eva(
        img_size=224,
        patch_size=patch_size,
        num_classes=0,
        global_pool="token",
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        qkv_bias=spec.qkv_bias,
        mlp_ratio=_hidden_ratio(hidden, spec.embed_dim),
        swiglu_mlp=spec.swiglu,
        swiglu_align_to=1 if spec.swiglu else 0,  # separate fc1_g / fc1_x (official w1 / w2), exact width
        drop_path_rate=drop_path_rate,
        norm_layer=partial(LayerNorm, eps=DINOV3_LN_EPS),
        init_values=layer_scale_init,
        class_token=True,
        num_reg_tokens=num_register_tokens,
        use_abs_pos_emb=False,
        use_rot_pos_emb=True,
        rope_type="dinov3",
        rope_temperature=rope_base,
        rope_rotate_half=True,
        rope_shift_coords=rope_shift,
        rope_jitter_coords=rope_jitter,
        rope_rescale_coords=rope_rescale,
        use_fc_norm=False,
        use_post_transformer_norm=final_norm,
        dynamic_img_size=True,
        dynamic_img_pad=True,
        **kwargs,
    )
    vit.patch_embed = exportable_patch_embed(vit.patch_embed)  # one grid expression: exports stay dynamic
    vit.rope = DINOv3RotaryEmbedding(
        dim=spec.embed_dim // spec.num_heads,
        temperature=rope_base,
        feat_shape=None,
        normalize_coords="separate",
        grid_indexing="ij",
        rotate_half=True,
        shift_coords=rope_shift,
        jitter_coords=rope_jitter,
        rescale_coords=rope_rescale,
        device=device,
    )
    vit.dinov3_arch = spec.name if not isinstance(arch, DINOv3Arch) else arch.name
    return vit


def materialize_dinov3_vit(vit: Eva, device: Union[str, torch.device] = "cpu") -> Eva:
    """Allocate a ViT built with ``device="meta"`` on ``device`` WITHOUT initialising its parameters
    (skips timm's random init: seconds for a ViT-L, minutes for the 7B), then rebuild its derived
    buffers (the zero K bias). Load a complete state dict right after (``rope.periods`` included, as
    :func:`d2reg.checkpoint.dinov3.fit_to_model` returns). Returns ``vit``."""
    vit.to_empty(device=device)
    loaded = set(vit.state_dict())
    derived = {n: b for n, b in vit.named_buffers() if n not in loaded and b.is_floating_point()}
    for b in derived.values():
        b.fill_(float("nan"))  # so that a buffer no module rebuilds is caught here, not by chance later
    reinit_non_persistent_buffers(vit)
    stale = [n for n, b in derived.items() if torch.isnan(b).any()]
    if stale:
        raise RuntimeError(f"d2reg bug: derived buffers {stale} are in no state dict and no module rebuilds them "
                           "after to_empty (give their module an init_non_persistent_buffers method).")
    return vit


# ------------------------------------------------------------------------------ windowed attention
class DINOv3WindowedAttention(nn.Module):
    """timm ``EvaAttention`` with windowed patch attention and global prefix tokens.

    Partition-based (not a masked full-sequence attention): the qkv projection and RoPE run on the full
    sequence, with every patch's RoPE phase that of its position in the FULL grid; then one gather lays
    the rotated q/k/v out as windows. In a windowed block:

    - the patch queries of a window attend to that window's patches plus the P = 1 + storage shared
      prefix tokens (the same P keys for every window, no copies);
    - the prefix queries attend globally (all P + h*w tokens), exactly as in the global block;
    - padded keys (grid padded at the bottom/right to a multiple of ``window_size``, detectron2's window
      order) are masked out, so the output does not depend on the padding.

    So one window covering the grid equals global attention. Takes over the submodules and parameters of
    the ``EvaAttention`` it replaces under the same names (same state-dict keys).
    """

    def __init__(self, attn: EvaAttention, window_size: int, num_prefix_tokens: int, grid: Optional[WindowGrid] = None):
        super().__init__()
        if not isinstance(attn, EvaAttention) or attn.qkv is None:
            raise NotImplementedError("DINOv3 windowed attention needs timm's EvaAttention with a fused qkv")
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.rotate_half = attn.rotate_half
        self.qkv = attn.qkv
        self.q_bias = attn.q_bias
        self.v_bias = attn.v_bias
        if attn.k_bias is not None:
            self.register_buffer("k_bias", attn.k_bias, persistent=False)
        else:
            self.k_bias = None
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.attn_drop, self.norm, self.proj, self.proj_drop = attn.attn_drop, attn.norm, attn.proj, attn.proj_drop
        self.gate = attn.gate
        self.window_size = window_size
        self.num_prefix_tokens = num_prefix_tokens
        self._grid = grid if grid is not None else WindowGrid()

    def init_non_persistent_buffers(self) -> None:
        """Zero the K bias again, as timm's ``EvaAttention`` does: it is not in any state dict, so after
        ``to_empty`` (:func:`materialize_dinov3_vit`) it would otherwise hold whatever the memory held."""
        if self.k_bias is not None:
            self.k_bias.zero_()

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, num_prefix_tokens={self.num_prefix_tokens}"

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("windowed attention takes no attention mask")
        B, N, C = x.shape
        P, ws, nh, hd = self.num_prefix_tokens, self.window_size, self.num_heads, self.head_dim
        h, w = self._grid.checked_hw(N, P)
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # full-grid phases, before any partition
            q = torch.cat([q[:, :, :P], apply_rot_embed_cat(q[:, :, P:], rope, half=self.rotate_half)], 2).type_as(v)
            k = torch.cat([k[:, :, :P], apply_rot_embed_cat(k[:, :, P:], rope, half=self.rotate_half)], 2).type_as(v)
        dropout_p = self.attn_drop.p if self.training else 0.0

        out_prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v, dropout_p=dropout_p)  # (B, nh, P, hd)

        q_idx, kv_idx, back, mask, nw = self._grid.layout(ws, P, x.device)
        L = P + ws * ws
        qw = q.index_select(2, q_idx).view(B, nh, nw, ws * ws, hd).transpose(1, 2).reshape(B * nw, nh, ws * ws, hd)
        kw = k.index_select(2, kv_idx).view(B, nh, nw, L, hd).transpose(1, 2).reshape(B * nw, nh, L, hd)
        vw = v.index_select(2, kv_idx).view(B, nh, nw, L, hd).transpose(1, 2).reshape(B * nw, nh, L, hd)
        if mask is not None:  # (nw, ...) -> (B*nw, ...); also for B == 1: no size test in a graph
            mask = mask.repeat(B, 1, 1, 1)
            if is_exporting():
                mask = exportable_attn_mask(mask, ws * ws, qkv.dtype)
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, dropout_p=dropout_p)
        out = out.view(B, nw, nh, ws * ws, hd).transpose(1, 2).reshape(B, nh, nw * ws * ws, hd).index_select(2, back)

        x = torch.cat([out_prefix, out], dim=2).transpose(1, 2).reshape(B, N, nh * hd)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        return self.proj_drop(x)


def enable_dinov3_window_attention(vit: Eva, window_size: int, window_block_indexes: Sequence[int]) -> Eva:
    """Make the blocks ``window_block_indexes`` of a DINOv3 ``Eva`` (from :func:`create_dinov3_vit`) use
    ``window_size`` x ``window_size`` windowed attention (:class:`DINOv3WindowedAttention`), in place.

    ``window_block_indexes`` lists the WINDOWED blocks (detectron2's ``ViT`` meaning); negative indexes
    count from the end; the others stay global. ``window_size <= 0`` does nothing. Parameters and
    state-dict keys do not change, so weights load before or after. Returns ``vit``.
    """
    if window_size <= 0:
        return vit
    depth = len(vit.blocks)
    if not len(window_block_indexes):
        raise ValueError(f"window_size={window_size} but window_block_indexes is empty, so no block of the "
                         f"{depth}-block DINOv3 ViT would be windowed.")
    take = resolve_block_indices(window_block_indexes, depth, "window_block_indexes")
    grid = getattr(vit, "_d2reg_window_grid", None)
    if grid is None:
        grid = WindowGrid()
        vit._d2reg_window_grid = grid

        def record_grid(module, inputs, output):  # Eva's dynamic-size patch_embed: (B, h, w, C)
            grid.hw = (output.shape[1], output.shape[2])

        vit.patch_embed.register_forward_hook(record_grid)
    for i in take:
        blk = vit.blocks[i]
        attn = blk.attn
        if isinstance(attn, DINOv3WindowedAttention):
            attn.window_size = window_size
            continue
        blk.attn = DINOv3WindowedAttention(attn, window_size, vit.num_prefix_tokens, grid)
    return vit

