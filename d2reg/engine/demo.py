"""The embedded demo behind ``tools/demo.py`` / ``make demo``: train a tiny ViT-reg on the synthetic
shapes, evaluate with detectron2's evaluators and draw predictions with detectron2's ``Visualizer``."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_argument_parser
from detectron2.utils.visualizer import ColorMode, Visualizer

from .trainer import setup_cfg

__all__ = ["DEMO_CONFIGS", "demo_config_path", "demo_cfg", "draw_predictions"]

DEMO_CONFIGS = {"instance": "mask_rcnn_vit_tiny_synth.yaml", "sem_seg": "sem_fpn_vit_tiny_synth.yaml"}


def demo_config_path(task: str) -> str:
    """Path of ``configs/demo/<task's config>`` in the source checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "configs", "demo", DEMO_CONFIGS[task])


def demo_cfg(task: str = "instance", weights: Optional[str] = None, output_dir: Optional[str] = None,
             opts: Sequence[str] = ()):
    """The frozen demo config. With ``weights`` (a DINOv2 checkpoint in any layout d2reg reads) the
    backbone takes the checkpoint's width, heads and registers (its first ``MODEL.D2REG.DEPTH``
    blocks) and the file goes through ``MODEL.WEIGHTS``, i.e. :class:`D2RegCheckpointer`."""
    extra = []
    if weights:
        from ..checkpoint import load_dinov2_checkpoint

        _, info = load_dinov2_checkpoint(weights)
        extra += [
            "MODEL.WEIGHTS", weights,
            "MODEL.D2REG.EMBED_DIM", str(info.embed_dim),
            "MODEL.D2REG.NUM_HEADS", str(max(1, info.embed_dim // 64)),
            "MODEL.D2REG.NUM_REGISTER_TOKENS", str(info.num_register_tokens),
            "MODEL.D2REG.DEPTH", str(min(4, info.depth)),
            "MODEL.D2REG.LR_DECAY", "0.7",
        ]
        if info.swiglu:
            extra += ["MODEL.D2REG.ARCH", "vit_giant2"]
    if output_dir:
        extra += ["OUTPUT_DIR", output_dir]
    args = default_argument_parser().parse_args(["--config-file", demo_config_path(task)] + extra + list(opts))
    return setup_cfg(args)


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
        gt = Visualizer(img, meta, scale=2.0).draw_dataset_dict(d) if "annotations" in d else None
        if gt is None:
            sem = read_image(d["sem_seg_file_name"])
            gt = Visualizer(img, meta, scale=2.0).draw_sem_seg(sem, alpha=0.5)
        net_in = img if fmt == "RGB" else img[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(net_in.transpose(2, 0, 1)))
        with torch.no_grad():
            out = model([{"image": tensor, "height": img.shape[0], "width": img.shape[1]}])[0]
        vis = Visualizer(img, meta, scale=2.0, instance_mode=ColorMode.IMAGE)
        if "instances" in out:
            inst = out["instances"].to("cpu")
            pred = vis.draw_instance_predictions(inst[inst.scores >= score_thresh])
        else:
            pred = vis.draw_sem_seg(out["sem_seg"].argmax(0).cpu(), alpha=0.5)
        top.append(gt.get_image())
        bottom.append(pred.get_image())
    grid = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(path)
    return path
