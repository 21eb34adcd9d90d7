"""timm's ``PatchEmbed`` with one expression for the patch grid, so that graphs stay dynamic."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed as TimmPatchEmbed

from .tracing import is_exporting

__all__ = ["PatchEmbed", "exportable_patch_embed"]


class PatchEmbed(TimmPatchEmbed):
    """timm's ``PatchEmbed`` (same arguments, weights and outputs) whose grid is ``ceil(H / p)`` written
    the same way in :meth:`dynamic_feat_size` and in the padding of :meth:`forward`.

    timm pads by ``(p - H % p) % p`` but reports ``math.ceil(H / p)``; for a symbolic ``H``
    (``torch.export`` with dynamic shapes) the two cannot be proven equal, so the feature reshape
    (and the window layout) would pin the exported graph to the traced size. While exporting, the
    input is padded here to ``ceil(H / p) * p`` first (timm then pads nothing); eagerly nothing changes.
    """

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        if not self.dynamic_img_pad:
            return super().dynamic_feat_size(img_size)
        ph, pw = self.patch_size  # (H + p - 1) // p, not -(-H // p): ONNX divides integers truncating to zero
        return (img_size[0] + ph - 1) // ph, (img_size[1] + pw - 1) // pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens as timm's ``PatchEmbed`` returns them (``output_fmt``)."""
        if self.dynamic_img_pad and is_exporting():
            h, w = self.dynamic_feat_size((x.shape[-2], x.shape[-1]))
            x = F.pad(x, (0, w * self.patch_size[1] - x.shape[-1], 0, h * self.patch_size[0] - x.shape[-2]))
        return super().forward(x)


def exportable_patch_embed(patch_embed: TimmPatchEmbed) -> PatchEmbed:
    """A :class:`PatchEmbed` with the same settings that takes over ``patch_embed``'s projection and norm
    (the same modules, so the same parameters and state-dict keys); for models that build timm's class
    themselves (``Eva``)."""
    fmt = None if patch_embed.flatten else patch_embed.output_fmt
    new = PatchEmbed(img_size=patch_embed.img_size, patch_size=patch_embed.patch_size,
                     in_chans=patch_embed.proj.in_channels, embed_dim=patch_embed.proj.out_channels,
                     flatten=patch_embed.flatten, output_fmt=fmt, bias=patch_embed.proj.bias is not None,
                     strict_img_size=patch_embed.strict_img_size, dynamic_img_pad=patch_embed.dynamic_img_pad,
                     device="meta")
    new.proj, new.norm = patch_embed.proj, patch_embed.norm
    return new
