"""LazyConfig training (``tools/lazyconfig_train_net.py``): detectron2's ``do_train`` / ``do_test``
with the d2reg checkpointer, saved random states and the resumable sampler."""
from __future__ import annotations

import logging

from detectron2.config import instantiate
from detectron2.config.instantiate import locate
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from .checkpointer import D2RegCheckpointer, RNGState
from .data import ResumableTrainingSampler, resume_loader
from .ddp import create_ddp_model

__all__ = ["do_test", "do_train", "instantiate_train_loader"]

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    """Evaluate ``model`` with ``cfg.dataloader.test`` / ``cfg.dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return None
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(ret)
    return ret


def instantiate_train_loader(train_cfg):
    """Instantiate ``cfg.dataloader.train``; for detectron2's ``build_detection_train_loader``
    without an explicit sampler, with a :class:`ResumableTrainingSampler`. Returns (loader, sampler)."""
    target = train_cfg._target_
    target = locate(target) if isinstance(target, str) else target
    if target is not build_detection_train_loader or train_cfg.get("sampler") is not None:
        return instantiate(train_cfg), None
    kwargs = {k: instantiate(train_cfg[k]) for k in train_cfg if k != "_target_"}
    sampler = ResumableTrainingSampler(len(kwargs["dataset"]))
    kwargs["sampler"] = sampler
    loader = target(**kwargs)
    loader.resumable_sampler = sampler
    return loader, sampler


def do_train(args, cfg):
    """detectron2's lazyconfig ``do_train`` with ``D2RegCheckpointer`` (DINOv2 files as
    ``train.init_checkpoint``) and exact ``--resume``; ``train.extra_hooks`` (LazyCalls of hooks) run
    before detectron2's, and an ``lr_multiplier`` with an ``optimizer`` argument (a torch LR scheduler)
    receives the optimizer. Returns the final evaluation, if any."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, _ = instantiate_train_loader(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = D2RegCheckpointer(model, cfg.train.output_dir, trainer=trainer, rng=RNGState())
    results = {}

    def test_and_save():
        results["last"] = do_test(cfg, model)
        return results["last"]

    if "optimizer" in cfg.lr_multiplier:  # a torch LR scheduler (e.g. EoMT's per-group schedule) needs it
        cfg.lr_multiplier.optimizer = optim
    trainer.register_hooks([
        *[instantiate(h) for h in cfg.train.get("extra_hooks", [])],  # e.g. EoMT's MaskAnnealingHook, first
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_save),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter > 0:
        trainer.data_loader = resume_loader(
            trainer.data_loader, start_iter * (cfg.dataloader.train.total_batch_size // comm.get_world_size())
        )
    trainer.train(start_iter, cfg.train.max_iter)
    return results.get("last")
