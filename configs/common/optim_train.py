"""Optimizer and trainer settings shared by the ADE20k configs (the COCO ones take ViTDet's)."""
from detectron2 import model_zoo


def adamw(lr: float, weight_decay: float):
    """detectron2's AdamW (betas 0.9/0.999, no weight decay on norm layers)."""
    opt = model_zoo.get_config("common/optim.py").AdamW
    opt.lr = lr
    opt.weight_decay = weight_decay
    return opt


def make_train(max_iter: int, eval_period: int):
    train = model_zoo.get_config("common/train.py").train
    train.amp.enabled = True
    train.init_checkpoint = ""  # the backbone loads its DINOv2 weights itself (weights=...)
    train.max_iter = max_iter
    train.eval_period = eval_period
    train.checkpointer.period = eval_period
    return train
