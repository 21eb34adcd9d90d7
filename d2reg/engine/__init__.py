"""Training helpers behind ``tools/train_net.py`` and ``tools/lazyconfig_train_net.py``."""
from .checkpointer import D2RegCheckpointer, RNGState
from .data import ResumableTrainingSampler, build_resumable_train_loader
from .ddp import create_ddp_model
from .hooks import MaskAnnealingHook, mask_keep_probability
from .lazy import do_test, do_train, instantiate_train_loader
from .trainer import D2RegTrainer, build_evaluator, setup_cfg

__all__ = [
    "D2RegCheckpointer",
    "D2RegTrainer",
    "MaskAnnealingHook",
    "RNGState",
    "ResumableTrainingSampler",
    "build_evaluator",
    "build_resumable_train_loader",
    "create_ddp_model",
    "do_test",
    "do_train",
    "instantiate_train_loader",
    "mask_keep_probability",
    "setup_cfg",
]
