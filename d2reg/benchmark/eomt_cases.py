"""The benchmark's EoMT cases: :class:`d2reg.EoMT` against its bare backbone and against d2reg's Mask R-CNN
on the same ViT, forward and training step (see ``d2reg/benchmark/__init__.py``).

``<family>-eomt``: EoMT as the COCO panoptic recipe builds it (133 classes, 200 queries, the recipe's query
blocks for the arch) at input S. Forward: ``forward_logits`` with masked attention off (inference once the
annealing has ended; post-processing not timed). Training step: ``forward`` with the set loss (Hungarian
matching per prediction, point-sampled mask losses) against 8 synthetic segments per image, masked
attention on in every query block (the start of training, the dearest step), then backward.

``<family>-maskrcnn``: the COCO Mask R-CNN LazyConfig (``mask_rcnn_vit_s_100ep.py`` / its DINOv3 twin:
simple feature pyramid, RPN, box and mask heads) on the same ViT, random init, its square pad set to S
(the recipe pads to 1024) so both see the same pixels. Forward: ``inference(do_postprocess=False)`` with
the box score threshold at 0, so the mask head runs on the 100 detections per image a trained model
returns (a random one scores nothing above 0.05); training step: the four losses on the same segments.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

COCO_PANOPTIC_CLASSES = 133
COCO_THING_CLASSES = 80
SEGMENTS_PER_IMAGE = 8
EOMT_CASES = ("d2reg-eomt", "d2reg-maskrcnn", "dinov3-eomt", "dinov3-maskrcnn")
MASK_RCNN_CONFIGS = {"dinov2": "COCO/mask_rcnn_vit_s_100ep.py", "dinov3": "COCO/mask_rcnn_dinov3_vit_s_100ep.py"}

Build = Callable[[], nn.Module]
Call = Callable[[nn.Module, torch.Tensor], object]


def synthetic_targets(images: torch.Tensor, num_classes: int, num_segments: int = SEGMENTS_PER_IMAGE,
                      seed: int = 0) -> List[dict]:
    """detectron2 training inputs for ``images`` ``(N, 3, H, W)``: each dict has ``"image"`` (0-255 float,
    on the images' device) and ``"instances"`` with ``num_segments`` random rectangles as ``gt_masks``
    (BitMasks), their ``gt_boxes`` and random ``gt_classes`` in ``[0, num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    out = []
    for i in range(n):
        corners = torch.rand(num_segments, 2, 2, generator=g) * torch.tensor([w, h])
        lo, hi = corners.min(1).values.long(), corners.max(1).values.long() + 8
        masks = torch.zeros(num_segments, h, w, dtype=torch.bool)
        for k in range(num_segments):
            masks[k, lo[k, 1]: hi[k, 1], lo[k, 0]: hi[k, 0]] = True
        inst = Instances((h, w))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(inst.gt_masks.get_bounding_boxes().tensor)
        inst.gt_classes = torch.randint(num_classes, (num_segments,), generator=g)
        out.append({"image": (images[i].detach() * 57.0 + 117.0).clamp(0, 255), "height": h, "width": w,
                    "instances": inst.to(images.device)})
    return out


def _cached_inputs(num_classes: int) -> Callable[[torch.Tensor], List[dict]]:
    """The synthetic batch of an input tensor, built once per tensor (not inside the timed call)."""
    cache: Dict[Tuple[int, Tuple[int, ...]], List[dict]] = {}

    def get(x: torch.Tensor) -> List[dict]:
        key = (x.data_ptr(), tuple(x.shape))
        if key not in cache:
            cache[key] = synthetic_targets(x, num_classes)
        return cache[key]

    return get


def eomt_case(backbone: Build, arch: str, size: int) -> Tuple[Build, Call]:
    """(build, call) of an EoMT case around ``backbone(**kw)`` (a DINOv2Backbone / DINOv3Backbone factory)."""
    from ..modeling.eomt import EoMT
    from ..modeling.eomt_loss import EoMTCriterion
    from ..recipes import default_num_blocks

    def build() -> nn.Module:
        net = backbone(final_norm=True, out_indices=(-1,))
        blocks = min(default_num_blocks(arch), len(net.vit.blocks))
        return EoMT(backbone=net, num_classes=COCO_PANOPTIC_CLASSES, num_queries=200, num_blocks=blocks,
                    task="panoptic", criterion=EoMTCriterion(COCO_PANOPTIC_CLASSES), input_size=size)

    inputs = _cached_inputs(COCO_PANOPTIC_CLASSES)

    def call(model: nn.Module, x: torch.Tensor):
        if not model.training:
            model.masked_attn_enabled = False
            return model.forward_logits(x)
        model.masked_attn_enabled = True  # attn_mask_probs stay at their initial 1: masks in every query block
        return model(inputs(x))

    return build, call


def mask_rcnn_case(family: str, size: int, net_overrides: dict) -> Tuple[Build, Call]:
    """(build, call) of d2reg's COCO Mask R-CNN on the ViT of ``net_overrides`` (``arch`` and its overrides)."""
    from detectron2.config import instantiate

    from ..model_zoo import get_config

    def build() -> nn.Module:
        cfg = get_config(MASK_RCNN_CONFIGS[family])
        cfg.model.backbone.net.update(weights=None, **net_overrides)
        cfg.model.backbone.square_pad = size
        cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0
        return instantiate(cfg.model)

    inputs = _cached_inputs(COCO_THING_CLASSES)

    def call(model: nn.Module, x: torch.Tensor):
        batch = inputs(x)
        if not model.training:
            return [r.pred_masks for r in model.inference(batch, do_postprocess=False)]
        with EventStorage():  # the RPN and ROI heads log training statistics to it
            return model(batch)

    return build, call
