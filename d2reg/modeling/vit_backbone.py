"""``ViTBackbone``: what every d2reg ViT family shares as a detectron2 ``Backbone``.

A family subclass builds its timm ViT and names its checkpoint family; this base prunes the ViT to the
blocks it returns, loads weights through :mod:`d2reg.checkpoint`'s pipeline, freezes (or adds LoRA),
and runs ``forward_intermediates`` (prefix tokens dropped, ``NCHW`` feature maps).

``freeze_at="all"`` is the frozen path: the ViT runs under ``torch.no_grad()`` (no activation is kept
for backward; the pyramid on top still trains), always in eval mode, optionally with its weights in
bf16 (``frozen_dtype``); its parameters have ``requires_grad=False``, so detectron2's optimizer
builders never see them, and ``save_frozen=False`` lets :class:`d2reg.engine.D2RegCheckpointer`
leave them out of checkpoints (they are reloaded from ``weights``).
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Union

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ..checkpoint import CheckpointInfo, fit_state_dict, load_checkpoint
from ..vit import resolve_block_indices
from .lora import add_lora, check_lora, lora_from_config, merge_lora, without_lora

logger = logging.getLogger(__name__)

__all__ = ["FROZEN_DTYPES", "FreezeAt", "ViTBackbone", "check_freeze_at", "common_kwargs_from_config"]

FreezeAt = Union[int, str]
FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_freeze_at(freeze_at: FreezeAt, depth: int) -> None:
    if not (freeze_at in ("all", -1) or (isinstance(freeze_at, int) and 0 <= freeze_at <= depth + 1)):
        raise ValueError(f"freeze_at must be 0..{depth + 1} or 'all' (-1), got {freeze_at!r}.")


def _check_frozen_options(freeze_at: FreezeAt, frozen_dtype: str, save_frozen: bool, weights: Optional[str],
                          lora: Optional[dict]) -> None:
    if frozen_dtype not in FROZEN_DTYPES:
        raise ValueError(f"frozen_dtype must be one of {list(FROZEN_DTYPES)}, got {frozen_dtype!r}.")
    all_frozen = freeze_at in ("all", -1)
    if frozen_dtype != "float32" and not all_frozen:
        raise ValueError(
            f"frozen_dtype={frozen_dtype!r} applies to a frozen backbone only, but freeze_at={freeze_at!r}: set "
            "freeze_at='all' (MODEL.D2REG.FREEZE_AT -1) or leave frozen_dtype at 'float32'."
        )
    if lora and freeze_at != 0:
        raise ValueError(
            f"lora freezes every ViT weight except the LoRA matrices itself; freeze_at={freeze_at!r} would "
            "also stop the LoRA gradients (freeze_at='all') or mean nothing: leave freeze_at at 0 with lora."
        )
    if not save_frozen and not weights:
        raise ValueError(
            "save_frozen=False leaves the frozen ViT weights out of checkpoints and reloads them from the "
            "backbone's weights file, but weights is not set: pass weights=<file> (MODEL.D2REG.WEIGHTS) or "
            "keep save_frozen=True."
        )


def common_kwargs_from_config(c) -> dict:
    """The kwargs every family backbone takes, from a (recipe-resolved) ``cfg.MODEL.D2REG`` node."""
    return dict(
        arch=c.ARCH,
        weights=c.WEIGHTS or None,
        out_indices=tuple(c.OUT_INDICES),
        final_norm=c.FINAL_NORM,
        drop_path_rate=c.DROP_PATH_RATE,
        use_act_checkpoint=c.USE_ACT_CHECKPOINT,
        freeze_at=c.FREEZE_AT,
        window_size=c.WINDOW_SIZE,
        window_block_indexes=tuple(c.WINDOW_BLOCK_INDEXES),
        embed_dim=c.EMBED_DIM or None,
        depth=c.DEPTH or None,
        num_heads=c.NUM_HEADS or None,
        layer_scale_init=c.LAYER_SCALE_INIT,
        frozen_dtype=c.FROZEN_DTYPE,
        save_frozen=c.SAVE_FROZEN,
        lora=lora_from_config(c.LORA),
    )


class ViTBackbone(Backbone):
    """Base of the family backbones: subclasses set :attr:`checkpoint_family`, build ``self.vit`` (a
    timm ViT with ``forward_intermediates`` / ``prune_intermediate_layers``) and call :meth:`_finish`.

    Output: ``{"last_feat": (N, C, ceil(H/p), ceil(W/p))}`` from the last of ``out_indices`` plus
    ``{"block{i}": ...}`` for the others; the CLS and ``num_register_tokens`` prefix tokens are dropped.
    Blocks after the last of ``out_indices``, the head and (unless ``final_norm``) the final norm are
    removed, so every parameter gets a gradient and DDP needs no ``find_unused_parameters``.

    Frozen path (``freeze_at="all"``): no autograd in the ViT, eval mode whatever ``train()`` says,
    weights in ``frozen_dtype`` ("float32" | "bfloat16"; outputs in the input's dtype). ``lora``: a dict
    of :func:`d2reg.modeling.lora.add_lora` arguments (``rank``, ``alpha``, ``dropout``, ``blocks``,
    ``targets``), applied after the weights are loaded; :meth:`merge_lora` folds it back.
    """

    checkpoint_family: str = ""
    vit: torch.nn.Module

    def _finish(self, *, embed_dim: int, depth: int, patch_size: int, out_indices: Sequence[int],
                final_norm: bool, use_act_checkpoint: bool, freeze_at: FreezeAt,
                weights: Optional[str], fit_kwargs: Optional[dict] = None, after_prune=None,
                frozen_dtype: str = "float32", save_frozen: bool = True, lora: Optional[dict] = None) -> None:
        check_freeze_at(freeze_at, depth)
        lora = check_lora(lora)
        _check_frozen_options(freeze_at, frozen_dtype, save_frozen, weights, lora)
        self.frozen = freeze_at in ("all", -1)
        self.frozen_dtype = FROZEN_DTYPES[frozen_dtype]
        self.save_frozen, self.weights, self.lora = save_frozen, weights or None, lora
        self.patch_size, self.final_norm = patch_size, final_norm
        self._take = resolve_block_indices(out_indices, depth)
        # indices as a list: an int means "the last n blocks" to timm and would prune nothing
        self.vit.prune_intermediate_layers(list(self._take), prune_norm=not final_norm, prune_head=True)
        self.vit.set_grad_checkpointing(use_act_checkpoint)
        if after_prune is not None:
            after_prune()
        self.fit_kwargs = dict(fit_kwargs or {})  # how the family's fit_to_model loads files into this ViT
        self.checkpoint_info: Optional[CheckpointInfo] = None
        if weights:
            self.checkpoint_info = self.load_weights(weights)
        self._out_features = [f"block{i}" for i in self._take[:-1]] + ["last_feat"]
        self._out_feature_channels = {name: embed_dim for name in self._out_features}
        self._out_feature_strides = {name: patch_size for name in self._out_features}
        self._frozen_blocks = self._freeze(freeze_at)
        if lora:
            add_lora(self.vit, **lora)  # after loading: peft renames the wrapped weights (base_layer)
        if self.frozen_dtype != torch.float32:
            self.vit.to(self.frozen_dtype)
        self.train(self.training)

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: str) -> CheckpointInfo:
        """Load a local checkpoint of this backbone's family (any supported layout) into the ViT;
        see :func:`d2reg.checkpoint.load_checkpoint`. Raises :class:`d2reg.CheckpointError` on any
        mismatch (another family, another architecture)."""
        sd, info = load_checkpoint(path, family=self.checkpoint_family)
        with without_lora(self.vit):  # (after LoRA: the file fills the wrapped base layers)
            self.vit.load_state_dict(fit_state_dict(sd, info, self.vit, **self.fit_kwargs), strict=True)
        logger.info("d2reg: loaded %s into %s (patch %d -> %d)", path, type(self).__name__, info.patch_size,
                    self.patch_size)
        return info

    # ------------------------------------------------------------------ training
    def _freeze(self, freeze_at: FreezeAt) -> int:
        """Freeze the stem (and blocks); returns the number of frozen blocks."""
        if freeze_at in ("all", -1):
            self.vit.requires_grad_(False)
            return len(self.vit.blocks)
        if freeze_at == 0:
            return 0
        stem = [self.vit.patch_embed] + [getattr(self.vit, n, None) for n in ("cls_token", "reg_token", "pos_embed")]
        for item in stem:
            if item is not None:
                item.requires_grad_(False)
        for blk in self.vit.blocks[: freeze_at - 1]:
            blk.requires_grad_(False)
        return min(freeze_at - 1, len(self.vit.blocks))

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "frozen", False):
            self.vit.eval()  # the frozen path: no stochastic depth or dropout, ever
        for blk in self.vit.blocks[: self._frozen_blocks]:
            blk.eval()  # frozen blocks: no stochastic depth, deterministic features
        return self

    def merge_lora(self) -> int:
        """Fold the LoRA matrices into the ViT's linear weights (:func:`d2reg.modeling.lora.merge_lora`),
        in place: the backbone is then a plain one (plain state-dict keys; build the model that loads
        it without ``lora``). Returns the number of merged layers."""
        n = merge_lora(self.vit)
        self.lora = None
        return n

    # ------------------------------------------------------------------ detectron2 contract
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {name: (N, C, ceil(H/p), ceil(W/p))}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects (N, 3, H, W) images, got {tuple(x.shape)}.")
        if self.frozen:
            with torch.no_grad():  # not inference_mode: the outputs must be savable for the pyramid's backward
                feats = [f.to(x.dtype) for f in self._features(x.to(self.frozen_dtype))]
        else:
            feats = self._features(x)
        return dict(zip(self._out_features, feats))

    def _features(self, x: torch.Tensor):
        return self.vit.forward_intermediates(
            x, indices=self._take, norm=self.final_norm, output_fmt="NCHW", intermediates_only=True
        )

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
