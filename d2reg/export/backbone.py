"""ONNX export of a d2reg backbone (a ViT, or a ViT inside a pyramid) at any input size.

``torch.onnx.export(dynamo=True)`` records the backbone with symbolic ``N, H, W``; the d2reg ViTs switch
their size-dependent steps to exportable forms while recording (:func:`d2reg.vit.tracing.is_exporting`):
the position-embedding resize becomes two interpolation matrices built from the grid size in the graph
(the same bicubic as PyTorch: antialiased for the register models, the 0.1-offset path without), the
window layout index arithmetic, DINOv3's RoPE grid a function of the size. Attention is a single ONNX
``Attention`` node from opset 23 (onnxruntime runs it fused); older opsets spell it out.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..extras import require
from ..modeling.vit_backbone import ViTBackbone
from ..solver import find_vit_backbone

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BACKBONE_OPSET", "ExportError", "ExportResult", "dynamic_size_range", "export_backbone",
           "onnx_input_dims", "require_vit_backbone"]

DEFAULT_BACKBONE_OPSET = 23  # the first with a fused Attention operator
MAX_SIDE = 8192


class ExportError(ValueError):
    """A model or request the exporter cannot handle; the message says what to do instead."""


@dataclass
class ExportResult:
    """What was written: ``path``, the graph's input / output names, whether ``H, W`` (and ``N``) are
    dynamic, the opset, and the accepted side range of a dynamic graph."""

    path: str
    input_names: List[str]
    output_names: List[str]
    dynamic: bool
    opset: int
    size_range: Optional[Tuple[int, int]] = None
    notes: List[str] = field(default_factory=list)


def require_vit_backbone(module: nn.Module) -> ViTBackbone:
    """The d2reg ViT backbone in ``module`` (itself, a pyramid's ``net``, a model's ``backbone``), found
    by :func:`d2reg.solver.find_vit_backbone`; an :class:`ExportError` when there is none."""
    _, vit = find_vit_backbone(module)
    if vit is None:
        raise ExportError(f"{type(module).__name__} holds no d2reg ViT backbone (DINOv2Backbone / DINOv3Backbone); "
                          "d2reg.export exports d2reg models only.")
    return vit


def dynamic_size_range(backbone: nn.Module) -> Tuple[int, int]:
    """``(min_side, max_side)`` in pixels that one dynamic graph of ``backbone`` serves.

    ``torch.export`` assumes no dimension is 1, so the patch grid needs at least 2 rows and columns,
    and a windowed ViT at least 2 windows per side (``patch * (window + 1)`` pixels); a pyramid needs
    its coarsest level (stride ``s``) at least 2 wide (``2 * s``)."""
    vit = require_vit_backbone(backbone)
    p = vit.patch_size
    window = max((getattr(m, "window_size", 0) for m in vit.modules() if hasattr(m, "_grid")), default=0)
    low = p * (window + 1) if window else 2 * p
    strides = [s.stride for s in backbone.output_shape().values()]
    return max(low, 2 * max(strides)), MAX_SIDE


class _Outputs(nn.Module):
    """A backbone's output dict as a tuple, in ``names`` order (ONNX graphs have positional outputs)."""

    def __init__(self, backbone: nn.Module, names: Sequence[str]):
        super().__init__()
        self.backbone, self.names = backbone, list(names)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.backbone(images)
        return tuple(out[n] for n in self.names)


def onnx_input_dims(path: str) -> List[List[object]]:
    """Per graph input, its dimensions: ints for fixed sizes, names (str) for dynamic ones."""
    onnx = require("onnx", "reading an ONNX graph")
    model = onnx.load(path, load_external_data=False)
    return [[d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input]


def _example_side(low: int, stride: int) -> int:
    """A side for the recorded example: larger than the minimum, a multiple of the coarsest stride, and
    different from the verification sizes (so those are sizes the graph never saw)."""
    side = max(2 * low, 128)
    return -(-side // stride) * stride


def export_backbone(backbone: nn.Module, path: str, *, static_size: Optional[Tuple[int, int]] = None,
                    opset: int = DEFAULT_BACKBONE_OPSET) -> ExportResult:
    """Write ``backbone`` (a d2reg ``ViTBackbone``, or a pyramid / module around one that returns a
    dict of feature maps) to ``path`` as ONNX.

    Input ``images``: float32 ``(N, 3, H, W)`` as the backbone receives it (normalised, padded);
    outputs: one per feature, named after it (``p2`` ... ``p6``, or ``block{i}`` ... ``last_feat``),
    ``(N, C, H / s, W / s)``. Dynamic ``N, H, W`` (sides in :func:`dynamic_size_range`) unless
    ``static_size=(H, W)`` (batch 1). When ``torch.export`` cannot keep a size dynamic the graph is
    exported static at the example size and :attr:`ExportResult.notes` says so (also logged as a
    warning). Verify the file with :func:`d2reg.export.verify_backbone`.
    """
    if opset < 17:
        raise ExportError(f"opset {opset}: d2reg exports need opset >= 17 (LayerNormalization); 23 fuses Attention.")
    low, high = dynamic_size_range(backbone)
    names = list(backbone.output_shape())
    notes: List[str] = []
    was_training = backbone.training
    require("onnxscript", "export_backbone (torch.onnx.export(dynamo=True))")
    wrapper = _Outputs(backbone, names).eval()
    try:
        if static_size is not None:
            h, w = static_size
            example = torch.zeros(1, 3, h, w)
            dynamic_shapes = None
        else:
            stride = max(s.stride for s in backbone.output_shape().values())
            side = _example_side(low, stride)
            example = torch.zeros(2, 3, side, side + stride)  # batch 2 and non-square: nothing specialised to 1
            dims = dict(N=torch.export.Dim("N", min=1, max=1024), H=torch.export.Dim("H", min=low, max=high),
                        W=torch.export.Dim("W", min=low, max=high))
            dynamic_shapes = {"images": {0: dims["N"], 2: dims["H"], 3: dims["W"]}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            torch.onnx.export(wrapper, (example,), path, dynamo=True, dynamic_shapes=dynamic_shapes,
                              input_names=["images"], output_names=names, opset_version=opset, verbose=False)
    finally:
        backbone.train(was_training)
    dims = onnx_input_dims(path)[0]
    dynamic = all(isinstance(d, str) for d in dims[2:])
    if static_size is None and not dynamic:
        note = (f"torch.export could not keep H, W dynamic for {type(backbone).__name__}: exported STATIC at "
                f"{tuple(example.shape)}; only that size runs. Pass --static H W for the size you deploy.")
        logger.warning(note)
        notes.append(note)
    return ExportResult(path=path, input_names=["images"], output_names=names, dynamic=dynamic, opset=opset,
                        size_range=(low, high) if dynamic else None, notes=notes)

