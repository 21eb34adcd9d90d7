"""EoMT inference: the official evaluation's image resizing and post-processing, in detectron2's formats.

- panoptic / instance: each image is resized to fit a ``size`` x ``size`` square (longer side ``size``)
  and zero-padded bottom/right; the mask logits are cropped back and resized to the output size.
- semantic: the shorter side is resized to ``size`` and ``size`` x ``size`` windows slide along the
  longer side (evenly spread, overlapping); per-pixel class scores are averaged over the windows.

One difference from the official code: images are resized as float tensors with ``F.interpolate``
(bilinear, antialiased when shrinking) rather than as 8-bit PIL images, so pixels differ by rounding.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

__all__ = [
    "instance_inference",
    "panoptic_inference",
    "resize_and_pad",
    "semantic_inference",
    "semantic_windows",
    "unpad_and_resize",
]


def _resize(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` -> ``(C, *size)``, bilinear (antialiased when shrinking, as PIL's resize)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image[None], size, mode="bilinear", antialias=shrink, align_corners=False)[0]


def _fit_size(size: Tuple[int, int], side: int) -> Tuple[int, int]:
    factor = min(side / size[0], side / size[1])
    return round(size[0] * factor), round(size[1] * factor)


def resize_and_pad(image: torch.Tensor, side: int) -> torch.Tensor:
    """``(3, h, w)`` 0-255 float image -> ``(3, side, side)``: resized so its longer side is ``side``,
    zero-padded bottom/right (before normalisation, as the official code pads its uint8 images)."""
    h, w = _fit_size(tuple(image.shape[-2:]), side)
    image = _resize(image, (h, w))
    return F.pad(image, (0, side - w, 0, side - h))


def unpad_and_resize(logits: torch.Tensor, image_size: Tuple[int, int], side: int,
                     out_size: Tuple[int, int]) -> torch.Tensor:
    """Mask logits ``(Q, side, side)`` of a :func:`resize_and_pad` ed image of ``image_size`` -> ``(Q, *out_size)``."""
    h, w = _fit_size(image_size, side)
    return F.interpolate(logits[None, :, :h, :w], tuple(out_size), mode="bilinear")[0]


def panoptic_inference(mask_logits: torch.Tensor, class_logits: torch.Tensor, thing_ids: Set[int],
                       object_mask_threshold: float, overlap_threshold: float) -> Tuple[torch.Tensor, List[Dict]]:
    """Official EoMT panoptic merging of one image's ``(Q, H, W)`` mask logits and ``(Q, C + 1)`` class logits.

    Queries whose best class is "no object" or whose score is at most ``object_mask_threshold`` are
    dropped; each pixel goes to the query maximising score x mask probability; a query keeps its pixels
    whose probability is >= 0.5 if the argmax left it at least ``overlap_threshold`` of its mask; the
    segments of one stuff class merge into one. Returns detectron2's ``(seg, segments_info)``: ``seg``
    ``(H, W)`` int32 with 0 for void and segment ids from 1; ``segments_info`` dicts with ``id``,
    ``category_id`` (contiguous), ``isthing``, ``score``.
    """
    scores, classes = class_logits.softmax(-1).max(-1)
    seg = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32, device=mask_logits.device)
    keep = classes.ne(class_logits.shape[-1] - 1) & (scores > object_mask_threshold)
    if not keep.any():
        return seg, []
    masks, scores, classes = mask_logits[keep].sigmoid(), scores[keep], classes[keep]
    owner = (scores[:, None, None] * masks).argmax(0)
    segments: List[Dict] = []
    stuff_segment: Dict[int, int] = {}
    for k, cls in enumerate(classes.tolist()):
        mask = masks[k] >= 0.5
        won = owner == k
        final = mask & won
        area, won_area = int(mask.sum()), int(won.sum())
        if area == 0 or won_area == 0 or not final.any() or won_area / area < overlap_threshold:
            continue
        isthing = cls in thing_ids
        if not isthing and cls in stuff_segment:
            seg[final] = stuff_segment[cls]
            continue
        segment_id = len(segments) + 1
        if not isthing:
            stuff_segment[cls] = segment_id
        seg[final] = segment_id
        segments.append({"id": segment_id, "category_id": cls, "isthing": isthing, "score": float(scores[k])})
    return seg, segments


def instance_inference(mask_logits: torch.Tensor, class_logits: torch.Tensor, topk: int) -> Instances:
    """Official EoMT instance outputs: the ``topk`` best (query, class) pairs of one image's ``(Q, H, W)``
    mask logits and ``(Q, C + 1)`` class logits; masks are logits > 0, scores are class probability x
    mean mask probability inside the mask; boxes (which the official code has none of) enclose the masks."""
    probs = class_logits.softmax(-1)[:, :-1]
    num_classes = probs.shape[-1]
    top_scores, top = probs.flatten().topk(min(topk, probs.numel()), sorted=False)
    labels, queries = top % num_classes, top // num_classes
    logits = mask_logits[queries]
    masks = logits > 0
    flat = masks.flatten(1).float()
    mask_scores = (logits.sigmoid().flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    result = Instances(tuple(mask_logits.shape[-2:]))
    result.pred_masks = masks
    result.pred_boxes = BitMasks(masks).get_bounding_boxes()
    result.scores = top_scores * mask_scores
    result.pred_classes = labels
    return result


def semantic_windows(image: torch.Tensor, side: int) -> Tuple[torch.Tensor, List[Tuple[int, int]], Tuple[int, int]]:
    """``(3, h, w)`` 0-255 image -> ``(crops (K, 3, side, side), [(start, end)] along the longer side,
    scaled (h', w'))``: the shorter side resized to ``side``, ``K = ceil(longer / side)`` windows
    spread evenly from one end to the other."""
    h, w = image.shape[-2:]
    factor = max(side / h, side / w)
    scaled = (round(h * factor), round(w * factor))
    image = _resize(image, scaled)
    long = max(scaled)
    num = math.ceil(long / side)
    step = (num * side - long) / (num - 1) if num > 1 else 0
    origins = [(int(j * (side - step)), int(j * (side - step)) + side) for j in range(num)]
    vertical = scaled[0] > scaled[1]
    crops = [image[:, a:b, :] if vertical else image[:, :, a:b] for a, b in origins]
    return torch.stack(crops), origins, scaled


def semantic_inference(mask_logits: torch.Tensor, class_logits: torch.Tensor, origins: Sequence[Tuple[int, int]],
                       scaled: Tuple[int, int], out_size: Tuple[int, int]) -> torch.Tensor:
    """Windows' ``(K, Q, side, side)`` mask logits and ``(K, Q, C + 1)`` class logits -> per-pixel class
    scores ``(C, *out_size)``: sigmoid(mask) x softmax(class) (no-object dropped) summed over queries,
    averaged where windows overlap, resized bilinearly."""
    per_pixel = torch.einsum("kqhw,kqc->kchw", mask_logits.sigmoid(), class_logits.softmax(-1)[..., :-1])
    total = per_pixel.new_zeros((per_pixel.shape[1], *scaled))
    count = per_pixel.new_zeros((1, *scaled))
    vertical = scaled[0] > scaled[1]
    for crop, (a, b) in zip(per_pixel, origins):
        if vertical:
            total[:, a:b] += crop
            count[:, a:b] += 1
        else:
            total[:, :, a:b] += crop
            count[:, :, a:b] += 1
    return F.interpolate((total / count)[None], tuple(out_size), mode="bilinear")[0]
