"""YACS training: ``D2RegTrainer`` (detectron2's ``DefaultTrainer`` with d2reg's optimizer,
checkpointer, evaluators and exact resume) and the config set-up used by ``tools/train_net.py``."""
from __future__ import annotations

import logging
import weakref

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.utils import comm

from ..config import add_d2reg_config, eomt_dataset, resolve_recipe
from ..data.eomt_mapper import EoMTInstanceDatasetMapper, EoMTPanopticDatasetMapper, EoMTSemanticDatasetMapper
from ..data.readers import load_sem_seg_gt
from ..evaluation import build_panoptic_evaluator
from ..recipes import get_eomt_recipe
from ..solver import TwoStageWarmupPolyLR, add_gradient_clipping, build_optimizer, get_eomt_optimizer_params
from .checkpointer import D2RegCheckpointer, RNGState
from .data import build_resumable_train_loader, resume_loader
from .hooks import MaskAnnealingHook

__all__ = ["D2RegTrainer", "build_evaluator", "setup_cfg"]

_EOMT_MAPPERS = {"panoptic": EoMTPanopticDatasetMapper, "instance": EoMTInstanceDatasetMapper,
                 "semantic": EoMTSemanticDatasetMapper}


def _is_eomt(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "EoMT"


def setup_cfg(args) -> CfgNode:
    """detectron2 config + d2reg keys, merged with ``args.config_file`` and ``args.opts``, frozen;
    then ``default_setup`` (logging, seeding, config dump into OUTPUT_DIR)."""
    cfg = get_cfg()
    add_d2reg_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("MODEL.DEVICE %s but no CUDA device: running on the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        logging.getLogger(__name__).warning("SOLVER.AMP.ENABLED needs a GPU: training in fp32 on the CPU.")
        cfg.SOLVER.AMP.ENABLED = False
    cfg = resolve_recipe(cfg)  # the dumped config.yaml shows the recipe's concrete values
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def build_evaluator(cfg, dataset_name: str, output_folder=None):
    """Evaluator by the data set's ``evaluator_type``: "coco" -> ``COCOEvaluator`` (pure-Python
    pycocotools, ``use_fast_impl=False``: the fast one needs detectron2's compiled ``_C``),
    "sem_seg" -> ``SemSegEvaluator``, "coco_panoptic_seg" -> panoptic quality
    (:func:`d2reg.evaluation.build_panoptic_evaluator`)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco_panoptic_seg":  # detectron2's with panopticapi, else d2reg's PQ
        return build_panoptic_evaluator(dataset_name, output_folder)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, sem_seg_loading_fn=load_sem_seg_gt
        )
    raise NotImplementedError(f"no evaluator for data set {dataset_name!r} (evaluator_type {evaluator_type!r}).")


class D2RegTrainer(DefaultTrainer):
    """``DefaultTrainer`` through its override points, with:

    - :func:`d2reg.solver.build_optimizer` (SGD/AdamW, layer-wise lr decay ``MODEL.D2REG.LR_DECAY``,
      gradient clipping);
    - :class:`D2RegCheckpointer` (d2reg-family files as ``MODEL.WEIGHTS``; a file matching nothing is
      an error) saving random states too, and a training sampler that skips what a resumed run has
      already seen, so ``--resume`` gives the weights of an uninterrupted run;
    - COCO / sem-seg evaluators by ``evaluator_type``; ``train()`` returns the last evaluation.

    Multi-process training wraps the model with detectron2's ``create_ddp_model``, which passes
    ``device_ids`` (GPU processes). Multi-process CPU (gloo) training runs through
    ``tools/lazyconfig_train_net.py``, whose loop uses :func:`d2reg.engine.create_ddp_model`.
    """

    def __init__(self, cfg):
        self._rng = RNGState()
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = None
        if _is_eomt(cfg):
            mapper = _EOMT_MAPPERS[cfg.MODEL.EOMT.TASK](cfg, is_train=True)
        return build_resumable_train_loader(cfg, mapper)[0]

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if not _is_eomt(cfg):
            return super().build_test_loader(cfg, dataset_name)
        # images as read: EoMT resizes and pads (or slides windows) itself, as the official evaluation
        return build_detection_test_loader(cfg, dataset_name, mapper=_EOMT_MAPPERS[cfg.MODEL.EOMT.TASK](cfg, False))

    def build_hooks(self):
        # DefaultTrainer builds a plain DetectionCheckpointer just before its hooks: swap in d2reg's.
        self.checkpointer = D2RegCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self), rng=self._rng,
        )
        hooks = super().build_hooks()
        anneal = self.cfg.MODEL.EOMT.ANNEAL
        if _is_eomt(self.cfg) and anneal.ENABLED:  # first: the probabilities are set before the iteration runs
            hooks.insert(0, MaskAnnealingHook((anneal.STARTS, anneal.ENDS), anneal.POWER))
        return hooks

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            images_per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            self._trainer.data_loader = resume_loader(self._trainer.data_loader, self.start_iter * images_per_rank)

    def train(self):
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_optimizer(cls, cfg, model):
        if not _is_eomt(cfg):
            return build_optimizer(cfg, model)
        cfg = resolve_recipe(cfg)
        decay_query_blocks = get_eomt_recipe(cfg.MODEL.D2REG.FAMILY, eomt_dataset(cfg)).decay_query_blocks
        params = get_eomt_optimizer_params(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY,
                                           cfg.MODEL.D2REG.LR_DECAY, decay_query_blocks,
                                           weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        opt = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        return add_gradient_clipping(cfg, opt)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if not _is_eomt(cfg):
            return super().build_lr_scheduler(cfg, optimizer)
        return TwoStageWarmupPolyLR(optimizer, cfg.SOLVER.MAX_ITER, cfg.SOLVER.EOMT.WARMUP_ITERS,
                                    cfg.SOLVER.EOMT.POLY_POWER)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)
