"""Evaluation: panoptic quality without panopticapi (:mod:`d2reg.evaluation.panoptic`)."""
from .panoptic import (
    D2RegPanopticEvaluator,
    build_panoptic_evaluator,
    id2rgb,
    panopticapi_available,
    pq_compute,
    rgb2id,
)

__all__ = [
    "D2RegPanopticEvaluator",
    "build_panoptic_evaluator",
    "id2rgb",
    "panopticapi_available",
    "pq_compute",
    "rgb2id",
]
