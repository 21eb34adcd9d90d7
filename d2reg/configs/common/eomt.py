"""Shared LazyConfig pieces of the EoMT recipes (tue-mps/eomt, "Your ViT is Secretly an Image Segmentation
Model"): the model over a d2reg family backbone, AdamW with the official layer-wise lr decay and gradient
clipping, the two-stage warm-up + poly schedule and the mask-annealing hook, all from the one recipe
table (``d2reg.recipes.EOMT_RECIPES``, by family and data set).

The schedule follows ``train.max_iter``: the lr schedule and the annealing windows interpolate it, so
another batch size or length keeps the official shape (set ``train.max_iter``, e.g.
``d2reg.recipes.eomt_max_iter(family, dataset, ims_per_batch)``); the number of query blocks follows the
backbone's ``arch`` (3 S/B, 4 L, 5 g).
"""
from detectron2.config import LazyCall as L

from d2reg import EoMT
from d2reg.engine import MaskAnnealingHook
from d2reg.modeling.eomt_loss import EoMTCriterion
from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD, default_num_blocks, eomt_annealing_windows, get_eomt_recipe
from d2reg.solver import TwoStageWarmupPolyLR, adamw_with_grad_clip, get_eomt_optimizer_params
from d2reg.zoo import get_config

from .d2reg_vit import dinov2_vit, dinov3_vit


def eomt_backbone(family: str, arch: str):
    """The ViT as EoMT uses it: patch 16 (DINOv2's 14 resampled), its final norm, the last block's
    tokens, global attention, no drop path (the official ``timm.create_model`` default)."""
    make = dinov3_vit if family == "dinov3" else dinov2_vit
    return make(arch, final_norm=True, out_indices=(-1,), drop_path_rate=0.0)


def eomt_model(family: str, dataset: str, task: str, num_classes: int, arch: str = "vit_large",
               input_size=None, thing_ids=None):
    """``L(EoMT)``: ``num_queries`` and ``input_size`` from the recipe, query blocks by ``arch``."""
    r = get_eomt_recipe(family, dataset)
    return L(EoMT)(
        backbone=eomt_backbone(family, arch),
        num_classes=num_classes,
        num_queries=r.num_queries,
        num_blocks=L(default_num_blocks)(arch="${..backbone.arch}"),
        task=task,
        criterion=L(EoMTCriterion)(num_classes="${..num_classes}"),  # the official loss weights and points
        pixel_mean=list(IMAGENET_MEAN),
        pixel_std=list(IMAGENET_STD),
        input_size=input_size or r.input_size,
        thing_ids=thing_ids,
    )


def eomt_optimizer(family: str, dataset: str):
    """AdamW (wd 0.05 on every parameter), the recipe's lr and layer decay, gradient norm clipped to 0.01
    (the official ``gradient_clip_val``)."""
    r = get_eomt_recipe(family, dataset)
    return L(adamw_with_grad_clip)(
        params=L(get_eomt_optimizer_params)(base_lr="${..lr}", weight_decay="${..weight_decay}", lr_decay=r.llrd,
                                            decay_query_blocks=r.decay_query_blocks),
        lr=r.lr,
        weight_decay=0.05,
        clip_norm=0.01,
    )


def eomt_lr_schedule(family: str, dataset: str):
    """Heads warm up first, then the ViT (the recipe's iterations), then poly 0.9 to ``train.max_iter``;
    ``optimizer`` is filled in by the training loop (d2reg.engine.lazy)."""
    return L(TwoStageWarmupPolyLR)(optimizer=None, max_iter="${train.max_iter}",
                                   warmup_iters=list(get_eomt_recipe(family, dataset).warmup_iters), power=0.9)


def eomt_train(family: str, dataset: str, max_iter: int, eval_period: int = 0):
    """detectron2's ``common/train.py`` with AMP (the official 16-mixed), ``max_iter``, and the mask
    annealing hook: windows from the recipe scaled to ``train.max_iter``, per query block of the model."""
    train = get_config("common/train.py").train
    train.amp.enabled = True
    train.init_checkpoint = ""  # the backbone loads its weights itself; or an official EoMT checkpoint
    train.max_iter = max_iter
    train.eval_period = eval_period
    train.checkpointer.period = eval_period or 5000
    train.extra_hooks = [L(MaskAnnealingHook)(
        windows=L(eomt_annealing_windows)(
            num_blocks="${model.num_blocks}", max_iter="${train.max_iter}",
            family=family, dataset=dataset, vit_warmup_iters="${lr_multiplier.warmup_iters.1}"),
        power=0.9,
    )]
    return train


def to_dinov3(model, optimizer, lr_multiplier, train, dataset: str = "coco") -> None:
    """A DINOv2-reg EoMT recipe -> the DINOv3 one of the same task: the backbone (same ``arch``), lr, layer
    decay, warm-up and annealing windows from the DINOv3 row of ``dataset``; the schedule length stays."""
    r = get_eomt_recipe("dinov3", dataset)
    model.backbone = eomt_backbone("dinov3", model.backbone.arch)
    optimizer.lr = r.lr
    optimizer.params.update(lr_decay=r.llrd, decay_query_blocks=r.decay_query_blocks)
    lr_multiplier.warmup_iters = list(r.warmup_iters)
    train.extra_hooks[0].windows.update(family="dinov3", dataset=dataset)
