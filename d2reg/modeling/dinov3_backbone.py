"""``DINOv3Backbone``: a DINOv3 ViT (RoPE, 4 storage tokens, patch 16) as a detectron2 ``Backbone``."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from detectron2.config import configurable

from ..checkpoint import CheckpointInfo
from ..config import resolve_recipe
from ..vit.dinov3 import (
    DINOV3_NUM_STORAGE_TOKENS,
    DINOV3_PATCH_SIZE,
    DINOv3Arch,
    create_dinov3_vit,
    enable_dinov3_window_attention,
    get_dinov3_arch,
    materialize_dinov3_vit,
)
from .vit_backbone import FreezeAt, ViTBackbone, common_kwargs_from_config

__all__ = ["DINOv3Backbone"]


class DINOv3Backbone(ViTBackbone):
    """DINOv3 ViT feature extractor for detectron2, built on timm's ``Eva`` (its DINOv3 settings).

    Input: (N, 3, H, W) detectron2-normalised images, any H and W (zero-padded bottom/right to a
    multiple of 16). Output: ``{"last_feat": (N, C, ceil(H/16), ceil(W/16))}`` (+ ``"block{i}"`` for
    the other ``out_indices``), stride 16. The CLS and the 4 storage tokens are dropped. LayerScale,
    LayerNorm eps 1e-5 and the masked (inert) K bias are those of the official models; RoPE is the
    official inference RoPE ("separate" per-axis coordinate normalisation, base 100) at every input
    size. Its pre-training augmentations (coordinate shift / jitter / rescale) are off unless
    ``rope_augment`` gives them (dict with ``shift``, ``jitter``, ``rescale``; training mode only).

    Windowed attention (``window_size``, ``window_block_indexes``): a window's patch tokens attend to
    their window plus the shared CLS/storage tokens, which attend globally; padded keys are masked and
    every patch keeps the RoPE phase of its position in the full grid (:mod:`d2reg.vit.dinov3`).

    With ``weights``, the ViT is built on the meta device and allocated without random init before the
    checkpoint fills it (seconds instead of minutes for the 7B).
    """

    checkpoint_family = "dinov3"

    @configurable
    def __init__(
        self,
        arch: Union[str, DINOv3Arch] = "vit_small",
        weights: Optional[str] = None,
        out_indices: Sequence[int] = (-1,),
        final_norm: bool = False,
        drop_path_rate: float = 0.0,
        use_act_checkpoint: bool = False,
        freeze_at: FreezeAt = 0,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        layer_scale_init: float = 1e-5,
        rope_augment: Optional[dict] = None,
        frozen_dtype: str = "float32",
        save_frozen: bool = True,
        lora: Optional[dict] = None,
    ):
        """
        Args:
            arch: "vit_small", "vit_small_plus", "vit_base", "vit_large", "vit_huge_plus", "vit_7b"
                (or a :class:`d2reg.vit.dinov3.DINOv3Arch`).
            weights: local DINOv3 checkpoint (official ``.pth`` / timm / Hugging Face / d2reg detectron2).
            out_indices, final_norm, drop_path_rate, use_act_checkpoint, freeze_at, window_size,
            window_block_indexes: as :class:`d2reg.DINOv2Backbone`.
            embed_dim, depth, num_heads: override ``arch``'s numbers (tiny or custom models).
            layer_scale_init: initial LayerScale gamma without ``weights``.
            rope_augment: optional pre-training RoPE augmentations, ``{"shift": .., "jitter": ..,
                "rescale": ..}``; None (default): the inference RoPE, also while training.
            frozen_dtype, save_frozen, lora: as :class:`d2reg.DINOv2Backbone`.
        """
        super().__init__()
        spec = get_dinov3_arch(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0, got {window_size}.")
        unknown = set(rope_augment or {}) - {"shift", "jitter", "rescale"}
        if unknown:
            raise ValueError(f"rope_augment takes 'shift', 'jitter', 'rescale'; got {sorted(unknown)}.")
        aug = rope_augment or {}
        self.arch, self.num_register_tokens = spec, DINOV3_NUM_STORAGE_TOKENS
        self.vit = create_dinov3_vit(
            spec, drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init, final_norm=True,
            rope_shift=aug.get("shift"), rope_jitter=aug.get("jitter"), rope_rescale=aug.get("rescale"),
            **({"device": "meta"} if weights else {}),
        )
        self._finish(
            embed_dim=spec.embed_dim, depth=spec.depth, patch_size=DINOV3_PATCH_SIZE, out_indices=out_indices,
            final_norm=final_norm, use_act_checkpoint=use_act_checkpoint, freeze_at=freeze_at, weights=weights,
            frozen_dtype=frozen_dtype, save_frozen=save_frozen, lora=lora,
            after_prune=(lambda: enable_dinov3_window_attention(self.vit, window_size, window_block_indexes))
            if window_size else None,
        )

    def load_weights(self, path: str) -> CheckpointInfo:
        if any(p.is_meta for p in self.vit.parameters()):
            materialize_dinov3_vit(self.vit)  # every tensor is then overwritten by the strict load
        return super().load_weights(path)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = resolve_recipe(cfg).MODEL.D2REG
        if c.NUM_REGISTER_TOKENS not in (DINOV3_NUM_STORAGE_TOKENS,):
            raise ValueError(
                f"MODEL.D2REG.NUM_REGISTER_TOKENS is {c.NUM_REGISTER_TOKENS}, but DINOv3 models have "
                f"{DINOV3_NUM_STORAGE_TOKENS} storage tokens (FAMILY dinov3): leave it at 4."
            )
        if c.PATCH_SIZE != DINOV3_PATCH_SIZE:
            raise ValueError(f"MODEL.D2REG.PATCH_SIZE is {c.PATCH_SIZE}; DINOv3 models run at patch 16.")
        return common_kwargs_from_config(c)
