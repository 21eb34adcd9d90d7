"""ONNX export of d2reg models and its verification with onnxruntime (``pip install -e .[export]``).

    from d2reg.export import export_backbone, verify_backbone, format_report
    result = export_backbone(model.backbone, "out/backbone.onnx")          # dynamic N, H, W
    print(format_report(verify_backbone(model.backbone, result.path, [(512, 512), (512, 768), (525, 549)])))

``export_model`` / ``verify_model`` do the same for a whole detectron2 R-CNN or semantic-segmentation
model; an EoMT's network exports as ``export_backbone(EoMTLogits(model), ...)``; ``tools/export_onnx.py``
wraps all four for a config file.
"""
from .backbone import (
    DEFAULT_BACKBONE_OPSET,
    ExportError,
    ExportResult,
    dynamic_size_range,
    export_backbone,
    onnx_input_dims,
    require_vit_backbone,
)
from .config import model_from_config
from .eomt import EoMTLogits
from .model import DEFAULT_MODEL_OPSET, export_model, model_adapter
from .verify import VerifyRow, default_verify_sizes, format_report, ort_session, verify_backbone, verify_model

__all__ = [
    "DEFAULT_BACKBONE_OPSET",
    "DEFAULT_MODEL_OPSET",
    "EoMTLogits",
    "ExportError",
    "ExportResult",
    "VerifyRow",
    "default_verify_sizes",
    "dynamic_size_range",
    "export_backbone",
    "export_model",
    "format_report",
    "model_adapter",
    "model_from_config",
    "onnx_input_dims",
    "ort_session",
    "require_vit_backbone",
    "verify_backbone",
    "verify_model",
]
