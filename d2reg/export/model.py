"""ONNX export of a whole detectron2 model with a d2reg backbone, through detectron2's ``TracingAdapter``.

The graph is recorded by the TorchScript tracer (``torch.onnx.export(dynamo=False)``), as detectron2's
own ``export_model.py`` does: detectron2's R-CNN post-processing (NMS, ROIAlign, per-image loops) is
written for that tracer, not for ``torch.export``. The d2reg backbone takes its exportable forms while
tracing too, so image height and width stay dynamic; verification (:func:`d2reg.export.verify_model`)
checks that at sizes the trace never saw.

- R-CNN models (``GeneralizedRCNN``: Mask R-CNN, Cascade Mask R-CNN): input ``image`` ``(3, H, W)``
  float32 in the model's ``INPUT.FORMAT`` and 0-255 range (the model normalises and pads);
  outputs ``boxes (K, 4)``, ``classes (K,)``, ``masks (K, 1, M, M)`` (per-box mask probabilities, to
  paste with ``detectron2.layers.paste_masks_in_image``), ``scores (K,)``, ``image_size (2,)``; boxes
  in input-image pixels (detectron2's ``do_postprocess=False`` output).
- Semantic segmentation (``SemanticSegmentor``): input ``image`` as above; output ``sem_seg``
  ``(num_classes, H, W)`` logits at the input size.
"""
from __future__ import annotations

import warnings
from typing import Callable, List, Tuple

import torch
from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema, Schema
from detectron2.modeling import GeneralizedRCNN, SemanticSegmentor
from torch import nn

from ..extras import require
from .backbone import ExportError, ExportResult, require_vit_backbone

__all__ = ["DEFAULT_MODEL_OPSET", "export_model", "model_adapter"]

DEFAULT_MODEL_OPSET = 17  # detectron2's ROIAlign / NMS symbolics and the TorchScript exporter's range
_OUTPUT_NAMES = {"pred_boxes": "boxes", "pred_classes": "classes", "pred_masks": "masks"}


def _rcnn_inference(model: GeneralizedRCNN, inputs):
    return model.inference(inputs, do_postprocess=False)[0]


def _semseg_inference(model: SemanticSegmentor, inputs):
    return model(inputs)[0]["sem_seg"]


def _inference_func(model: nn.Module) -> Callable:
    if isinstance(model, GeneralizedRCNN):
        if model.proposal_generator is None:
            raise ExportError("R-CNN export needs a proposal generator (RPN); precomputed proposals do not export.")
        return _rcnn_inference
    if isinstance(model, SemanticSegmentor):
        return _semseg_inference
    raise ExportError(
        f"whole-model export supports detectron2's GeneralizedRCNN (Mask / Cascade Mask R-CNN) and "
        f"SemanticSegmentor; {type(model).__name__} is neither. Export its backbone (--backbone-only / "
        "d2reg.export.export_backbone) and run the head in PyTorch."
    )


def _leaf_names(schema: Schema, prefix: str = "") -> List[str]:
    """Names of the flattened outputs of a detectron2 flatten schema (Instances fields, dict keys)."""
    if isinstance(schema, DictSchema):
        keys = list(schema.keys) + (["image_size"] if isinstance(schema, InstancesSchema) else [])
        subs = list(schema.schemas) + ([None] if isinstance(schema, InstancesSchema) else [])
        names = []
        for key, sub in zip(keys, subs):
            key = _OUTPUT_NAMES.get(key, key)
            names += [key] if sub is None else _leaf_names(sub, key)
        return names
    if isinstance(schema, ListSchema):
        return [n for i, sub in enumerate(schema.schemas) for n in _leaf_names(sub, f"{prefix}{i}")]
    return [prefix or "output"]


def model_adapter(model: nn.Module, example: torch.Tensor) -> Tuple[TracingAdapter, List[str]]:
    """detectron2's ``TracingAdapter`` around ``model`` (eval mode) called on ``{"image": example}``, and
    the names of its flattened outputs. ``adapter(image)`` returns the tuple the ONNX graph returns."""
    require_vit_backbone(model)
    adapter = TracingAdapter(model.eval(), [{"image": example}], _inference_func(model)).eval()
    with torch.no_grad():
        adapter(example)  # records the output schema
    schema = adapter.outputs_schema
    names = _leaf_names(schema) if schema is not None else ["output"]
    return adapter, ["sem_seg"] if names == ["output"] else names


def export_model(model: nn.Module, path: str, *, example_size: Tuple[int, int] = (320, 480),
                 static: bool = False, opset: int = DEFAULT_MODEL_OPSET) -> ExportResult:
    """Write the whole detectron2 ``model`` (see the module doc for inputs / outputs) to ``path``.
    Dynamic image height / width and detection count unless ``static``."""
    if opset < 16:
        raise ExportError(f"opset {opset}: whole-model export needs opset >= 16 (ROIAlign with aligned boxes).")
    h, w = example_size
    example = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    was_training = model.training
    try:
        require("onnx", "export_model (torch.onnx.export)")
        adapter, names = model_adapter(model, example)
        dynamic_axes = None
        if not static:
            dynamic_axes = {"image": {1: "height", 2: "width"}}
            for n in names:
                if n == "sem_seg":
                    dynamic_axes[n] = {1: "height", 2: "width"}
                elif n != "image_size":
                    dynamic_axes[n] = {0: "detections"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            # the TorchScript exporter is deprecated, but detectron2's R-CNN post-processing is written for it
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(adapter, (example,), path, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=names, dynamic_axes=dynamic_axes)
    finally:
        model.train(was_training)
    return ExportResult(path=path, input_names=["image"], output_names=names, dynamic=not static, opset=opset)
