"""The embedded demo behind ``tools/demo.py`` / ``make demo``: a tiny ViT-reg trained on the synthetic
shapes within a wall-clock budget, evaluated with detectron2's evaluators, drawn with its ``Visualizer``.

Not part of the training engine (:mod:`d2reg.engine` knows nothing of it). The configs are files the
caller passes (``tools/demo.py`` takes ``configs/demo/*.yaml`` beside it in the source checkout).
"""
from .budget import TimeBudget, cpu_model, plan_iterations, scale_steps
from .run import DemoTrainer, demo_cfg, draw_predictions

__all__ = ["DemoTrainer", "TimeBudget", "cpu_model", "demo_cfg", "draw_predictions", "plan_iterations", "scale_steps"]
