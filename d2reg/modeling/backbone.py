"""``DINOv2Backbone``: a DINOv2 ViT (with or without registers) as a detectron2 ``Backbone``."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from detectron2.config import configurable

from ..config import resolve_recipe
from ..vit import PRETRAIN_IMG_SIZE, ViTArch, create_dinov2_vit, get_arch
from .vit_backbone import FreezeAt, ViTBackbone, common_kwargs_from_config
from .window import enable_window_attention

__all__ = ["DINOv2Backbone"]


class DINOv2Backbone(ViTBackbone):
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
        frozen_dtype: str = "float32",
        save_frozen: bool = True,
        lora: Optional[dict] = None,
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
            frozen_dtype: with ``freeze_at="all"``: "float32" (default) or "bfloat16" (the frozen ViT's
                weights cast to bf16 and run under ``torch.no_grad``; outputs cast back to the input dtype).
                Any other value, or "bfloat16" without ``freeze_at="all"``, is an error.
            save_frozen: False: :class:`d2reg.engine.D2RegCheckpointer` leaves the ViT tensors that do not
                train (frozen parameters, buffers) out of checkpoints and takes them from ``weights`` on
                load (needs ``weights``). A trained head for a frozen ViT-7B is then megabytes, not 27 GB.
            lora: LoRA through ``peft`` on chosen linear layers, the rest of the ViT frozen (needs
                ``freeze_at=0``): dict with ``rank`` (8), ``alpha`` (16), ``dropout`` (0), ``blocks``
                (None: all kept blocks), ``targets`` (("qkv", "proj"); also "fc1", "fc2"). None or rank 0:
                off. :meth:`merge_lora` folds it into the weights (plain layers, plain checkpoint keys).
        """
        super().__init__()
        spec = get_arch(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        _check_args(num_register_tokens, patch_size, patch_resize, window_size)
        self.arch, self.num_register_tokens = spec, num_register_tokens
        self.vit = create_dinov2_vit(
            spec, num_register_tokens, patch_size, drop_path_rate=drop_path_rate,
            pretrain_img_size=pretrain_img_size, layer_scale_init=layer_scale_init,
        )
        self._finish(
            embed_dim=spec.embed_dim, depth=spec.depth, patch_size=patch_size, out_indices=out_indices,
            final_norm=final_norm, use_act_checkpoint=use_act_checkpoint, freeze_at=freeze_at, weights=weights,
            fit_kwargs=dict(patch_resize=patch_resize),
            frozen_dtype=frozen_dtype, save_frozen=save_frozen, lora=lora,
            after_prune=(lambda: enable_window_attention(self.vit, window_size, window_block_indexes))
            if window_size else None,
        )

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = resolve_recipe(cfg).MODEL.D2REG
        return dict(
            common_kwargs_from_config(c),
            num_register_tokens=c.NUM_REGISTER_TOKENS,
            patch_size=c.PATCH_SIZE,
            patch_resize=c.PATCH_RESIZE,
            pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        )


def _check_args(num_regs, patch_size, patch_resize, window_size) -> None:
    if not isinstance(num_regs, int) or num_regs < 0:
        raise ValueError(f"num_register_tokens must be an int >= 0 (4 for -reg models), got {num_regs!r}.")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int (16 for detectron2 pyramids), got {patch_size!r}.")
    if patch_resize not in ("pi", "bicubic"):
        raise ValueError(f"patch_resize must be 'pi' or 'bicubic', got {patch_resize!r}.")
    if window_size < 0:
        raise ValueError(f"window_size must be >= 0, got {window_size}.")
