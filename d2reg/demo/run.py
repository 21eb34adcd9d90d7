"""The demo's config, trainer and picture: a tiny ViT-reg trained on the synthetic shapes
(:mod:`d2reg.data`), evaluated with detectron2's evaluators and drawn with detectron2's ``Visualizer``."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_argument_parser, default_writers, hooks
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from ..checkpoint import read_checkpoint_info
from ..engine import D2RegTrainer, MaskAnnealingHook, setup_cfg
from ..evaluation import rgb2id
from .budget import TimeBudget, scale_steps

__all__ = ["DemoTrainer", "demo_cfg", "draw_predictions"]


# The architecture names whose MLP is SwiGLU (a custom-width SwiGLU checkpoint keeps its MLP kind).
SWIGLU_ARCH = {"dinov2": "vit_giant2", "dinov3": "vit_small_plus"}


def demo_cfg(config_file: str, weights: Optional[str] = None, output_dir: Optional[str] = None,
             opts: Sequence[str] = ()):
    """The frozen config of ``config_file`` (a demo YAML, e.g. ``configs/demo/*.yaml`` of the source
    checkout: ``tools/demo.py`` passes it). With ``weights`` (a DINOv2 or DINOv3 checkpoint in any
    layout d2reg reads; it must be of the config's ``MODEL.D2REG.FAMILY``) the backbone takes the
    checkpoint's architecture (its first ``MODEL.D2REG.DEPTH`` blocks) and the file goes through
    ``MODEL.WEIGHTS``, i.e. :class:`d2reg.engine.D2RegCheckpointer`."""
    extra = []
    if weights:
        info = read_checkpoint_info(weights)
        extra += [
            "MODEL.WEIGHTS", weights,
            "MODEL.D2REG.ARCH", info.arch or (SWIGLU_ARCH[info.family] if info.swiglu else "vit_small"),
            "MODEL.D2REG.EMBED_DIM", str(info.embed_dim),
            "MODEL.D2REG.NUM_HEADS", str(info.num_heads),
            "MODEL.D2REG.NUM_REGISTER_TOKENS", str(info.num_register_tokens),
            "MODEL.D2REG.DEPTH", str(min(4, info.depth)),
            "MODEL.D2REG.LR_DECAY", "0.7",
        ]
    if output_dir:
        extra += ["OUTPUT_DIR", output_dir]
    args = default_argument_parser().parse_args(["--config-file", config_file] + extra + list(opts))
    return setup_cfg(args)


class DemoTrainer(D2RegTrainer):
    """:class:`D2RegTrainer` whose run a :class:`TimeBudget` may shorten while it trains.

    detectron2's loop runs over ``range(start_iter, max_iter)`` fixed when training starts;
    :meth:`set_max_iter` lowers ``max_iter`` (never above the config's ``SOLVER.MAX_ITER``), rescales the
    LR schedule to it and tells the checkpointer where the run now ends; the loop's turns past the new
    ``max_iter`` run no step and no hook.
    """

    def __init__(self, cfg, budget: Optional[TimeBudget] = None):
        self.budget = budget
        self._checkpoint_hooks: List[hooks.PeriodicCheckpointer] = []
        self.lr_steps = [s for s in cfg.SOLVER.STEPS if s <= cfg.SOLVER.MAX_ITER]
        super().__init__(cfg)

    def build_hooks(self):
        ret = super().build_hooks()
        self._checkpoint_hooks = [h for h in ret if isinstance(h, hooks.PeriodicCheckpointer)]
        if self.budget is not None:
            # right after hooks.LRScheduler (see set_max_iter), before the checkpointer, evaluation and
            # writers, so that they see a plan that ends the run at this very iteration
            at = next((i + 1 for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)), len(ret))
            ret.insert(at, self.budget)
        return ret

    def build_writers(self):
        if self.budget is None:
            return super().build_writers()
        return default_writers(self.cfg.OUTPUT_DIR, None)  # no ETA for a length the budget may change

    def set_max_iter(self, max_iter: int) -> None:
        """End the run after ``max_iter`` iterations, with the config's schedule (warm-up in
        iterations, LR milestones ``SOLVER.STEPS`` at the same fractions of the run) rescaled to it.

        Called from a hook's ``after_step`` placed after ``hooks.LRScheduler`` (as :meth:`build_hooks`
        places the budget): the new scheduler is stepped to the next iteration here. Hooks after the
        caller (checkpointer, evaluation, writers) see the new ``max_iter`` at this iteration already."""
        max_iter = min(max(max_iter, self.iter + 1), self.cfg.SOLVER.MAX_ITER)
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SOLVER.STEPS = tuple(scale_steps(self.cfg.SOLVER.STEPS, self.cfg.SOLVER.MAX_ITER, max_iter))
        cfg.SOLVER.MAX_ITER = max_iter
        scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        scheduler.last_epoch = self.iter  # the schedule's position: this iteration, then step to the next
        scheduler.step()
        self.scheduler = scheduler  # hooks.LRScheduler reads trainer.scheduler at every step
        self.lr_steps = [s for s in cfg.SOLVER.STEPS if s <= max_iter]
        old_max = self.max_iter
        self.max_iter = max_iter
        for h in self._hooks:  # EoMT: the mask annealing keeps its shape over the shorter run
            if isinstance(h, MaskAnnealingHook):
                h.starts, h.ends = (scale_steps(h.starts, old_max, max_iter), scale_steps(h.ends, old_max, max_iter))
        for h in self._checkpoint_hooks:
            h.max_iter = max_iter  # writes model_final at the new last iteration

    def before_step(self):
        if self.iter < self.max_iter:
            super().before_step()

    def run_step(self):
        if self.iter < self.max_iter:
            super().run_step()

    def after_step(self):
        if self.iter < self.max_iter:
            super().after_step()

    def after_train(self):
        self.iter = min(self.iter, self.max_iter)  # the loop counted its empty turns too
        super().after_train()


def draw_predictions(cfg, model, dataset_name: str, path: str, num_images: int = 6, score_thresh: float = 0.5) -> str:
    """A PNG with ground truth (top row) and predictions (bottom row) of ``num_images`` images of
    ``dataset_name``, drawn with detectron2's ``Visualizer``. Returns ``path``."""
    meta = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    fmt = cfg.INPUT.FORMAT
    model.eval()
    top, bottom = [], []
    for d in dicts:
        img = read_image(d["file_name"], format="RGB")
        if "pan_seg_file_name" in d:  # detectron2's draw_dataset_dict would need panopticapi for this
            pan = torch.from_numpy(rgb2id(read_image(d["pan_seg_file_name"], format="RGB")))
            gt = Visualizer(img, meta, scale=2.0).draw_panoptic_seg(pan, d["segments_info"], area_threshold=0,
                                                                    alpha=0.5)
        elif "annotations" in d:
            gt = Visualizer(img, meta, scale=2.0).draw_dataset_dict(d)
        else:
            gt = Visualizer(img, meta, scale=2.0).draw_sem_seg(read_image(d["sem_seg_file_name"]), alpha=0.5)
        net_in = img if fmt == "RGB" else img[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(net_in.transpose(2, 0, 1)))
        with torch.no_grad():
            out = model([{"image": tensor, "height": img.shape[0], "width": img.shape[1]}])[0]
        vis = Visualizer(img, meta, scale=2.0, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in out:
            seg, segments = out["panoptic_seg"]
            pred = vis.draw_panoptic_seg(seg.cpu(), segments, alpha=0.5)
        elif "instances" in out:
            inst = out["instances"].to("cpu")
            pred = vis.draw_instance_predictions(inst[inst.scores >= score_thresh])
        else:
            pred = vis.draw_sem_seg(out["sem_seg"].argmax(0).cpu(), alpha=0.5)
        top.append(gt.get_image())
        bottom.append(pred.get_image())
    grid = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
