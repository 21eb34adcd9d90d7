"""ONNX export of an :class:`d2reg.EoMT`'s network: the final prediction of ``forward_logits`` with masked
attention off (as at inference once the annealing has ended), at dynamic batch and image size.

The graph's input ``images`` is ``(N, 3, H, W)`` float32, normalised as the model normalises (any H, W:
padded bottom/right to the patch multiple inside the graph); its outputs ``mask_logits``
``(N, Q, 4 * ceil(H/p), 4 * ceil(W/p))`` and ``class_logits`` ``(N, Q, C + 1)``. The post-processing
(panoptic merging, instance top-k, semantic windows: :mod:`d2reg.modeling.eomt_inference`) stays in
Python / the deployment, as in every EoMT deployment; detectron2's tracer-based whole-model export does
not apply (EoMT's post-processing is data-dependent Python)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from torch import nn

from ..modeling.eomt import EoMT
from .backbone import ExportError

__all__ = ["EoMTLogits"]


class EoMTLogits(nn.Module):
    """``EoMT`` -> a module with the export contract of a d2reg backbone (``output_shape()``, a dict of
    outputs): ``{"mask_logits": (N, Q, H/4, W/4), "class_logits": (N, Q, C + 1)}`` of the final prediction,
    masked attention off. Use it with :func:`d2reg.export.export_backbone` / ``verify_backbone``."""

    def __init__(self, model: EoMT):
        super().__init__()
        if not isinstance(model, EoMT):
            raise ExportError(f"EoMTLogits wraps a d2reg EoMT, got {type(model).__name__}.")
        self.model = model
        self.patch = model.backbone.patch_size

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {"mask_logits": ShapeSpec(channels=self.model.num_queries, stride=4),
                "class_logits": ShapeSpec(channels=self.model.num_classes + 1, stride=self.patch)}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = images.shape[-2:]
        images = F.pad(images, (0, (-w) % self.patch, 0, (-h) % self.patch))
        enabled = self.model.masked_attn_enabled
        self.model.masked_attn_enabled = False
        try:
            masks, classes = self.model.forward_logits(images)
        finally:
            self.model.masked_attn_enabled = enabled
        return {"mask_logits": masks[-1], "class_logits": classes[-1]}
