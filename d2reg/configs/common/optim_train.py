"""Optimizer and trainer settings shared by the d2reg LazyConfigs (detectron2's common/optim.py and
common/train.py, found by d2reg.zoo without detectron2.model_zoo)."""
from detectron2.config import LazyCall as L

from d2reg.recipes import layer_decay
from d2reg.solver import get_d2reg_optimizer_params
from d2reg.zoo import get_config

from .d2reg_vit import family_of

# the ViT of the COCO, ADE20k semantic-FPN and detrex configs (inside the simple feature pyramid)
NET_ARCH = "${model.backbone.net.arch}"
NET_TARGET = "${model.backbone.net._target_}"  # its class: the recipe family (DINOv2 / DINOv3)


def use_d2reg_param_groups(optimizer, decay_arch=NET_ARCH, decay_target=NET_TARGET):
    """Give a detectron2-style optimizer config (``params=L(get_default_optimizer_params)(...)``, as
    detectron2's and detrex's ``common/optim.py``) d2reg's param groups: no weight decay on the
    position embedding and prefix tokens (``d2reg.solver.NO_WEIGHT_DECAY``) and the recipe's
    layer-wise lr decay for the ViT whose ``arch`` ``decay_arch`` and class ``decay_target``
    interpolate (``None``: no layer decay), from the table row of that class's family. Returns ``optimizer``."""
    optimizer.params._target_ = get_d2reg_optimizer_params
    optimizer.params.lr_decay = (L(layer_decay)(arch=decay_arch, family=family_of(decay_target))
                                 if decay_arch else 1.0)
    return optimizer


def adamw(lr: float, weight_decay: float, decay_arch=NET_ARCH):
    """detectron2's AdamW (betas 0.9/0.999, no weight decay on norm layers) with d2reg's param groups."""
    opt = get_config("common/optim.py").AdamW
    opt.lr = lr
    opt.weight_decay = weight_decay
    return use_d2reg_param_groups(opt, decay_arch)


def make_train(max_iter: int, eval_period: int):
    train = get_config("common/train.py").train
    train.amp.enabled = True
    train.init_checkpoint = ""  # the backbone loads its DINOv2 weights itself (weights=...)
    train.max_iter = max_iter
    train.eval_period = eval_period
    train.checkpointer.period = eval_period
    return train
