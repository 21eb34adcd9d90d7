"""``DINOv2Backbone``: a DINOv2 ViT (with or without registers) as a detectron2 ``Backbone``."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from timm.models.vision_transformer import checkpoint_filter_fn

from ..checkpoint import CheckpointError, CheckpointInfo, load_dinov2_checkpoint
from .vit import (
    PRETRAIN_IMG_SIZE,
    ViTArch,
    create_dinov2_vit,
    get_arch,
    resize_patch_embed_weight,
    resolve_block_indices,
)

logger = logging.getLogger(__name__)

__all__ = ["DINOv2Backbone"]

FreezeAt = Union[int, str]


class DINOv2Backbone(Backbone):
    """DINOv2 ViT feature extractor for detectron2, built on timm's ``VisionTransformer``.

    Input: (N, 3, H, W) detectron2-normalised images, any H and W (padded bottom/right to a multiple
    of ``patch_size``). Output: ``{"last_feat": (N, C, ceil(H/p), ceil(W/p))}`` from the last entry
    of ``out_indices`` plus ``{"block{i}": ...}`` for the others. The CLS token and the
    ``num_register_tokens`` registers are dropped (``1 + num_register_tokens`` prefix tokens).

    Blocks after the last of ``out_indices``, the classifier head and (unless ``final_norm``) the
    final LayerNorm are removed, so every remaining parameter gets a gradient and DDP needs no
    ``find_unused_parameters``. ``final_norm=False`` (the default, as in ViTDet) keeps the high-norm
    tokens visible; the official ``get_intermediate_layers(norm=True)`` normalises them away.
    """

    checkpoint_family = "dinov2"  # which d2reg.checkpoint family loads into it

    @configurable
    def __init__(
        self,
        arch: Union[str, ViTArch] = "vit_small",
        num_register_tokens: int = 4,
        patch_size: int = 16,
        patch_resize: str = "pi",
        weights: Optional[str] = None,
        out_indices: Sequence[int] = (-1,),
        final_norm: bool = False,
        drop_path_rate: float = 0.0,
        use_act_checkpoint: bool = False,
        freeze_at: FreezeAt = 0,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        pretrain_img_size: int = PRETRAIN_IMG_SIZE,
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        layer_scale_init: float = 1e-5,
    ):
        """
        Args:
            arch: "vit_small", "vit_base", "vit_large", "vit_giant2" (or a :class:`ViTArch`).
            num_register_tokens: 4 for the "-reg" models, 0 for the original DINOv2.
            patch_size: patch size the model runs at; pre-trained 14-px kernels are resampled.
                detectron2's pyramid needs a power of two (16); 14 runs unchanged (stride 14).
            patch_resize: "pi" (FlexiViT pseudo-inverse resize, default) or "bicubic".
            weights: local checkpoint (official / timm / Hugging Face / d2reg detectron2 layout).
            out_indices: blocks whose outputs are returned (negative counts from the end).
            final_norm: apply the ViT's final LayerNorm to the outputs.
            drop_path_rate: stochastic-depth rate, linear over the blocks (timm's schedule).
            use_act_checkpoint: recompute each block in the backward pass to save memory.
            freeze_at: 0 trains all; 1 freezes patch embed, CLS/register tokens and pos embed;
                k > 1 also blocks 0..k-2; "all" (or -1) freezes the whole ViT.
            window_size: ViTDet-style windowed attention, window side in patches (0: off).
            window_block_indexes: the WINDOWED blocks (detectron2's ``ViT`` meaning); the others
                stay global. CLS/registers stay global; see :mod:`d2reg.modeling.window`.
            pretrain_img_size: size of the stored position-embedding grid, in 14-px patches.
            embed_dim, depth, num_heads: override ``arch``'s numbers (tiny or custom models).
            layer_scale_init: initial LayerScale gamma, used only without ``weights``: DINOv2's 1e-5
                keeps a fresh model's blocks near identity, so short from-scratch runs (the demo)
                want ~0.1–1.
        """
        super().__init__()
        spec = get_arch(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        _check_args(spec, num_register_tokens, patch_size, patch_resize, freeze_at, window_size)
        self.arch, self.patch_size, self.final_norm = spec, patch_size, final_norm
        self.num_register_tokens = num_register_tokens
        self.vit = create_dinov2_vit(
            spec, num_register_tokens, patch_size, drop_path_rate=drop_path_rate,
            pretrain_img_size=pretrain_img_size, layer_scale_init=layer_scale_init,
        )
        self._take = resolve_block_indices(out_indices, spec.depth)
        # Prune before loading: blocks after the last used one, the head and the unused final norm.
        # (indices as a list: an int means "the last n blocks" to timm and would prune nothing)
        self.vit.prune_intermediate_layers(list(self._take), prune_norm=not final_norm, prune_head=True)
        self.vit.set_grad_checkpointing(use_act_checkpoint)
        if window_size:
            from .window import enable_window_attention

            enable_window_attention(self.vit, window_size, window_block_indexes)
        self.checkpoint_info: Optional[CheckpointInfo] = None
        if weights:
            self.checkpoint_info = self.load_weights(weights, patch_resize)
        self._out_features = [f"block{i}" for i in self._take[:-1]] + ["last_feat"]
        self._out_feature_channels = {name: spec.embed_dim for name in self._out_features}
        self._out_feature_strides = {name: patch_size for name in self._out_features}
        self._frozen_blocks = self._freeze(freeze_at)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.D2REG
        return dict(
            arch=c.ARCH,
            num_register_tokens=c.NUM_REGISTER_TOKENS,
            patch_size=c.PATCH_SIZE,
            patch_resize=c.PATCH_RESIZE,
            weights=c.WEIGHTS or None,
            out_indices=tuple(c.OUT_INDICES),
            final_norm=c.FINAL_NORM,
            drop_path_rate=c.DROP_PATH_RATE,
            use_act_checkpoint=c.USE_ACT_CHECKPOINT,
            freeze_at=c.FREEZE_AT,
            window_size=c.WINDOW_SIZE,
            window_block_indexes=tuple(c.WINDOW_BLOCK_INDEXES),
            pretrain_img_size=c.PRETRAIN_IMG_SIZE,
            embed_dim=c.EMBED_DIM or None,
            depth=c.DEPTH or None,
            num_heads=c.NUM_HEADS or None,
            layer_scale_init=c.LAYER_SCALE_INIT,
        )

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: str, patch_resize: str = "pi") -> CheckpointInfo:
        """Load a local DINOv2 checkpoint (any supported layout) into the ViT; see
        :func:`d2reg.load_dinov2_checkpoint`. Raises :class:`CheckpointError` on any mismatch."""
        sd, info = load_dinov2_checkpoint(path)
        self.vit.load_state_dict(self.vit_state_dict_from(sd, info, patch_resize), strict=True)
        logger.info("d2reg: loaded %s (%s layout, patch %d -> %d)", path, info.format, info.patch_size,
                    self.patch_size)
        return info

    def vit_state_dict_from(self, sd: dict, info: CheckpointInfo, patch_resize: str = "pi") -> dict:
        """timm-layout DINOv2 tensors (from :func:`d2reg.load_dinov2_checkpoint`) -> the exact state
        dict of ``self.vit``: checks the architecture, resamples the patch embedding to this patch size
        and the position embedding to the stored grid, drops pruned blocks / head / unused final norm.
        Raises :class:`CheckpointError` when anything does not fit."""
        self._check_compatible(info)
        sd = dict(sd)
        if "patch_embed.proj.weight" in sd:
            sd["patch_embed.proj.weight"] = resize_patch_embed_weight(
                sd["patch_embed.proj.weight"], self.patch_size, patch_resize
            )
        sd = checkpoint_filter_fn(sd, self.vit)  # resamples pos_embed to the model's stored grid
        own = self.vit.state_dict()
        kept = len(self.vit.blocks)
        unexpected = [k for k in sd if k not in own and not _is_pruned_key(k, kept)]
        missing = [k for k in own if k not in sd]
        shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"checkpoint {info.path!r} ({info.format} layout) does not fit the model: missing "
                f"{_short(missing)}, unexpected {_short(unexpected)}, wrong shapes {_short(shapes)}."
            )
        return {k: sd[k] for k in own}

    def _check_compatible(self, info: CheckpointInfo) -> None:
        spec, problems = self.arch, []
        if info.embed_dim != spec.embed_dim:
            problems.append(
                f"checkpoint has embed_dim {info.embed_dim} ({info.arch or 'custom'}), config asks for "
                f"{spec.name} ({spec.embed_dim})"
            )
        if info.num_register_tokens != self.num_register_tokens:
            problems.append(
                f"checkpoint has {info.num_register_tokens} register tokens, config asks for "
                f"num_register_tokens={self.num_register_tokens}"
            )
        if info.swiglu != spec.swiglu:
            problems.append(
                f"checkpoint MLP is {'SwiGLU' if info.swiglu else 'GELU'}, config {spec.name} uses "
                f"{'SwiGLU' if spec.swiglu else 'GELU'}"
            )
        if not problems and info.depth < len(self.vit.blocks):
            problems.append(
                f"checkpoint has {info.depth} blocks, the model uses {len(self.vit.blocks)} "
                f"(depth {spec.depth}, out_indices up to {max(self._take)})"
            )
        if self.final_norm and not info.has_final_norm:
            problems.append("final_norm=True but the checkpoint has no final norm (norm.*)")
        if problems:
            raise CheckpointError(
                f"checkpoint {info.path!r} does not match the backbone config: " + "; ".join(problems)
                + ". Fix the config (arch / num_register_tokens) or pass the matching checkpoint."
            )

    # ------------------------------------------------------------------ training
    def _freeze(self, freeze_at: FreezeAt) -> int:
        """Freeze the stem (and blocks); returns the number of frozen blocks."""
        if freeze_at in ("all", -1):
            self.vit.requires_grad_(False)
            return len(self.vit.blocks)
        if freeze_at == 0:
            return 0
        stem = [self.vit.patch_embed, self.vit.cls_token, self.vit.pos_embed, self.vit.reg_token]
        for item in stem:
            if item is not None:
                item.requires_grad_(False)
        for blk in self.vit.blocks[: freeze_at - 1]:
            blk.requires_grad_(False)
        return min(freeze_at - 1, len(self.vit.blocks))

    def train(self, mode: bool = True):
        super().train(mode)
        for blk in self.vit.blocks[: self._frozen_blocks]:
            blk.eval()  # frozen blocks: no stochastic depth, deterministic features
        return self

    # ------------------------------------------------------------------ detectron2 contract
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {name: (N, C, ceil(H/p), ceil(W/p))}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DINOv2Backbone expects (N, 3, H, W) images, got {tuple(x.shape)}.")
        feats = self.vit.forward_intermediates(
            x, indices=self._take, norm=self.final_norm, output_fmt="NCHW", intermediates_only=True
        )
        return dict(zip(self._out_features, feats))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.patch_size, "square_size": 0}

    @property
    def num_layers(self) -> int:
        """Number of blocks kept (for layer-wise lr decay)."""
        return len(self.vit.blocks)


def _check_args(spec: ViTArch, num_regs, patch_size, patch_resize, freeze_at, window_size) -> None:
    if not isinstance(num_regs, int) or num_regs < 0:
        raise ValueError(f"num_register_tokens must be an int >= 0 (4 for -reg models), got {num_regs!r}.")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int (16 for detectron2 pyramids), got {patch_size!r}.")
    if patch_resize not in ("pi", "bicubic"):
        raise ValueError(f"patch_resize must be 'pi' or 'bicubic', got {patch_resize!r}.")
    if not (freeze_at in ("all", -1) or (isinstance(freeze_at, int) and 0 <= freeze_at <= spec.depth + 1)):
        raise ValueError(f"freeze_at must be 0..{spec.depth + 1} or 'all' (-1), got {freeze_at!r}.")
    if window_size < 0:
        raise ValueError(f"window_size must be >= 0, got {window_size}.")


def _is_pruned_key(key: str, kept_blocks: int) -> bool:
    if key.startswith(("norm.", "head.", "fc_norm.", "mask_token")):
        return True
    if key.startswith("blocks."):
        return int(key.split(".")[1]) >= kept_blocks
    return False


def _short(keys: list, n: int = 6) -> str:
    if not keys:
        return ""
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
