"""Training helpers behind ``tools/train_net.py`` and ``tools/lazyconfig_train_net.py``."""
from .checkpoint import D2RegCheckpointer, RNGState, convert_for_backbone, convert_to_detectron2, find_dinov2_backbone
from .data import ResumableTrainingSampler, build_resumable_train_loader
from .ddp import create_ddp_model
from .lazy import do_test, do_train, instantiate_train_loader
from .optimizer import build_optimizer, get_d2reg_optimizer_params
from .trainer import D2RegTrainer, add_d2reg_train_config, build_evaluator, load_sem_seg_gt, setup_cfg

__all__ = [
    "D2RegCheckpointer",
    "D2RegTrainer",
    "RNGState",
    "ResumableTrainingSampler",
    "add_d2reg_train_config",
    "build_evaluator",
    "build_optimizer",
    "build_resumable_train_loader",
    "convert_for_backbone",
    "convert_to_detectron2",
    "create_ddp_model",
    "do_test",
    "do_train",
    "find_dinov2_backbone",
    "get_d2reg_optimizer_params",
    "instantiate_train_loader",
    "load_sem_seg_gt",
    "setup_cfg",
]
