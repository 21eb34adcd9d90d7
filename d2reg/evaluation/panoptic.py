"""Panoptic quality (PQ, SQ, RQ) without panopticapi, and detectron2's panoptic evaluator on top of it.

panopticapi (https://github.com/cocodataset/panopticapi) is not on PyPI, and detectron2's
:class:`~detectron2.evaluation.COCOPanopticEvaluator` imports it inside ``process()`` (``id2rgb``) and
``evaluate()`` (``pq_compute``). This module provides:

- :func:`pq_compute`: panopticapi's ``pq_compute`` re-implemented with vectorised numpy (one
  ``np.unique`` over combined ground-truth/prediction ids per image, no multiprocessing), with the same
  semantics and the same result dict;
- :func:`rgb2id` / :func:`id2rgb`: the COCO panoptic PNG colour <-> segment id encoding
  (``id = R + 256 * G + 256**2 * B``);
- :class:`D2RegPanopticEvaluator`: detectron2's evaluator, unchanged, with panopticapi replaced by the
  functions above when panopticapi is not importable (real panopticapi is used when it is);
- :func:`build_panoptic_evaluator`: the evaluator a trainer should build for ``coco_panoptic_seg`` data.

Semantics (as panopticapi's ``evaluation.py``), per image:

- a ground-truth segment and a predicted segment of the same category match when
  ``IoU = |g & p| / (|p| + area(g) - |g & p| - |VOID & p|) > 0.5`` (predicted pixels on VOID do not
  count in the union; ``area(g)`` is the ground-truth JSON's ``area`` field, ``|p|`` the PNG pixel count);
  crowd ground-truth segments (``iscrowd == 1``) never match;
- unmatched non-crowd ground-truth segments are false negatives;
- an unmatched predicted segment is a false positive unless more than half of its pixels lie on VOID
  (ground-truth id 0, or pixels of ids absent from the ground-truth JSON are *not* VOID) plus the crowd
  segment of its category (the last one listed in ``segments_info`` when there are several);
- per category ``PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU)/TP``, ``RQ = TP / (TP +
  FP/2 + FN/2)``; "All" / "Things" / "Stuff" average over the categories of the ground-truth JSON (by
  their ``isthing``) that have at least one TP, FP or FN.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import types
from collections import defaultdict
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator
from PIL import Image

__all__ = [
    "D2RegPanopticEvaluator",
    "build_panoptic_evaluator",
    "id2rgb",
    "panopticapi_available",
    "pq_compute",
    "rgb2id",
]

OFFSET = 256 * 256 * 256  # ids are < 256**3 (three 8-bit channels): gt_id * OFFSET + pred_id is unique
VOID = 0


# ------------------------------------------------------------------------------ id <-> colour
def rgb2id(color):
    """COCO panoptic colour -> segment id, ``R + 256 * G + 256**2 * B``.

    Args:
        color: an array (H, W, C >= 3) of colours (any integer dtype; uint8 is widened), or one colour
            ``(r, g, b)``.
    Returns:
        an int64 array (H, W) of ids, or one ``int``.
    """
    if isinstance(color, np.ndarray) and color.ndim == 3:
        c = color[..., :3].astype(np.int64)
        return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]
    return int(color[0] + 256 * color[1] + 256 * 256 * color[2])


def id2rgb(id_map):
    """Segment id -> COCO panoptic colour (inverse of :func:`rgb2id`; ids are taken modulo 256**3, so
    -1 becomes (255, 255, 255) as in panopticapi).

    Args:
        id_map: an integer array (H, W) of ids, or one ``int``.
    Returns:
        a uint8 array (H, W, 3), or a list ``[r, g, b]``.
    """
    if isinstance(id_map, np.ndarray):
        ids = id_map.astype(np.int64)
        return np.stack([(ids // 256**i) % 256 for i in range(3)], axis=-1).astype(np.uint8)
    return [(int(id_map) // 256**i) % 256 for i in range(3)]


def _read_ids(path: str) -> np.ndarray:
    """Panoptic PNG -> (H, W) int64 segment ids."""
    with Image.open(path) as im:
        rgb = np.asarray(im, dtype=np.uint32)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"Panoptic PNG {path} has shape {rgb.shape}, mode {im.mode!r}; expected an RGB "
                         "image whose colours encode segment ids (id = R + 256*G + 256**2*B, id2rgb).")
    return rgb2id(rgb)


# ------------------------------------------------------------------------------ statistics
def _lookup(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each ``query`` id in ``sorted_ids`` (1-D, sorted), -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == query, pos, -1)


def _segment_arrays(segms: Dict[int, dict], keys: Tuple[str, ...]) -> Tuple[np.ndarray, ...]:
    """Sorted ids (int64) and one array per key of the segments dict ``{id: info}``."""
    ids = np.array(sorted(segms), dtype=np.int64)
    return (ids,) + tuple(np.array([segms[i][k] for i in ids.tolist()]) for k in keys)


def _pq_image(gt_ann: dict, pred_ann: dict, pan_gt: np.ndarray, pan_pred: np.ndarray, categories: dict,
              stats: Dict[Any, np.ndarray]) -> None:
    """Add one image's per-category ``[sum IoU, TP, FP, FN]`` to ``stats``.

    Args:
        gt_ann / pred_ann: COCO panoptic annotations (``image_id``, ``segments_info``).
        pan_gt / pan_pred: (H, W) integer segment ids decoded from the PNGs.
        categories: ``{category_id: category}`` of the ground-truth JSON.
    """
    image_id = gt_ann["image_id"]
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(f"In the image with ID {image_id} the ground-truth PNG is {pan_gt.shape[:2]} "
                         f"pixels and the predicted PNG {pan_pred.shape[:2]}; they must be the same size.")
    gt_segms = {el["id"]: el for el in gt_ann["segments_info"]}
    pred_segms = {el["id"]: el for el in pred_ann["segments_info"]}

    # predicted areas (PNG pixel counts) and the prediction's sanity checks
    labels, counts = np.unique(pan_pred, return_counts=True)
    pred_area = {}
    for label, cnt in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} is presented in PNG "
                           "and not presented in JSON.")
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} has unknown "
                           f"category_id {pred_segms[label]['category_id']}.")
        pred_area[label] = cnt
    missing = [i for i in pred_segms if i not in pred_area]
    if missing:
        raise KeyError(f"In the image with ID {image_id} the following segment IDs {missing} are presented "
                       "in JSON and not presented in PNG.")

    g_ids, g_cat, g_crowd = _segment_arrays(gt_segms, ("category_id", "iscrowd"))
    g_area = np.array([gt_segms[i].get("area", np.nan) for i in g_ids.tolist()], dtype=np.float64)
    p_ids, p_cat = _segment_arrays(pred_segms, ("category_id",))
    p_area = np.array([pred_area[i] for i in p_ids.tolist()], dtype=np.float64)

    # intersections of every (gt id, pred id) pair present in the image
    pairs, inter = np.unique(pan_gt.astype(np.int64) * OFFSET + pan_pred.astype(np.int64), return_counts=True)
    pair_gt, pair_pred, inter = pairs // OFFSET, pairs % OFFSET, inter.astype(np.float64)
    gi, pi = _lookup(g_ids, pair_gt), _lookup(p_ids, pair_pred)

    void_inter = np.zeros(len(p_ids))  # |VOID & p| per predicted segment
    on_void = (pair_gt == VOID) & (pi >= 0)
    void_inter[pi[on_void]] = inter[on_void]

    # matches: same category, non-crowd ground truth, IoU > 0.5
    both = (gi >= 0) & (pi >= 0)
    cg, cp, ci = gi[both], pi[both], inter[both]
    same = (g_crowd[cg] != 1) & (g_cat[cg] == p_cat[cp])
    cg, cp, ci = cg[same], cp[same], ci[same]
    if np.isnan(g_area[cg]).any():
        raise KeyError(f"In the image with ID {image_id} ground-truth segment(s) {g_ids[cg][np.isnan(g_area[cg])]}"
                       " have no 'area' in the ground-truth JSON; add each segment's pixel count as 'area'.")
    iou = ci / (p_area[cp] + g_area[cg] - ci - void_inter[cp])
    hit = iou > 0.5
    g_matched = np.zeros(len(g_ids), dtype=bool)
    p_matched = np.zeros(len(p_ids), dtype=bool)
    g_matched[cg[hit]] = True
    p_matched[cp[hit]] = True
    for cat, v in zip(g_cat[cg[hit]].tolist(), iou[hit].tolist()):
        stats[cat] += (v, 1, 0, 0)

    # false negatives: unmatched non-crowd ground truth
    for cat in g_cat[~g_matched & (g_crowd != 1)].tolist():
        stats[cat] += (0.0, 0, 0, 1)

    # false positives: unmatched predictions with at most half of their pixels on VOID + same-class crowd
    crowd_of_cat = {el["category_id"]: gid for gid, el in gt_segms.items() if el["iscrowd"] == 1}
    p_crowd = np.array([crowd_of_cat.get(c, -1) for c in p_cat.tolist()], dtype=np.int64)
    on_crowd = np.zeros(len(pairs), dtype=bool)
    on_crowd[pi >= 0] = pair_gt[pi >= 0] == p_crowd[pi[pi >= 0]]
    ignored = void_inter.copy()
    np.add.at(ignored, pi[on_crowd], inter[on_crowd])
    fp = ~p_matched & ~(ignored / p_area > 0.5)
    for cat in p_cat[fp].tolist():
        stats[cat] += (0.0, 0, 1, 0)


def _pq_average(stats: Dict[Any, np.ndarray], categories: dict, isthing: Optional[bool]):
    """``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}})`` over the categories of
    ``categories`` with the given ``isthing`` (``None``: all) that have at least one TP, FP or FN."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for label, info in categories.items():
        if isthing is not None and (info["isthing"] == 1) != isthing:
            continue
        iou, tp, fp, fn = stats[label].tolist()
        if tp + fp + fn == 0:
            per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denom = tp + 0.5 * fp + 0.5 * fn
        per_class[label] = {"pq": iou / denom, "sq": iou / tp if tp != 0 else 0.0, "rq": tp / denom}
        pq += per_class[label]["pq"]
        sq += per_class[label]["sq"]
        rq += per_class[label]["rq"]
    if n == 0:
        group = {None: "", True: "thing ", False: "stuff "}[isthing]
        raise ZeroDivisionError(f"PQ average over no categories: no {group}category of the ground-truth JSON "
                                "has any ground-truth or predicted segment (panopticapi divides by zero "
                                "here too); evaluate on data with such segments.")
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
               pred_folder: Optional[str] = None) -> dict:
    """Panoptic quality of the predictions of ``pred_json_file`` against ``gt_json_file``, as
    panopticapi's ``pq_compute`` (same arguments, semantics, printed table and result).

    Args:
        gt_json_file / pred_json_file: COCO panoptic JSON files (``annotations`` with ``image_id``,
            ``file_name``, ``segments_info``; the ground truth also has ``categories`` with ``id``,
            ``isthing`` and ``area`` in its segments).
        gt_folder / pred_folder: folders of the PNGs; default: the JSON path without ``.json``.
    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...},
        "per_class": {category_id: {"pq", "sq", "rq"}}}`` (fractions in [0, 1]; ``n``: the number of
        categories averaged).
    """
    start = time.time()
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_json_file.replace(".json", "") if gt_folder is None else gt_folder
    pred_folder = pred_json_file.replace(".json", "") if pred_folder is None else pred_folder
    categories = {el["id"]: el for el in gt_json["categories"]}
    for kind, folder in (("ground truth", gt_folder), ("predicted", pred_folder)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Folder {folder} with {kind} segmentations doesn't exist; pass "
                                    f"{'gt' if kind == 'ground truth' else 'pred'}_folder= explicitly.")

    print(f"Evaluation panoptic segmentation metrics:\nGround truth:\n\tSegmentation folder: {gt_folder}\n"
          f"\tJSON file: {gt_json_file}\nPrediction:\n\tSegmentation folder: {pred_folder}\n"
          f"\tJSON file: {pred_json_file}")
    pred_annotations = {el["image_id"]: el for el in pred_json["annotations"]}
    stats: Dict[Any, np.ndarray] = defaultdict(lambda: np.zeros(4))
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in pred_annotations:
            raise KeyError(f"no prediction for the image with id: {gt_ann['image_id']}")
        pred_ann = pred_annotations[gt_ann["image_id"]]
        pan_gt = _read_ids(os.path.join(gt_folder, gt_ann["file_name"]))
        pan_pred = _read_ids(os.path.join(pred_folder, pred_ann["file_name"]))
        _pq_image(gt_ann, pred_ann, pan_gt, pan_pred, categories, stats)

    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _pq_average(stats, categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    print("{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N") + "\n" + "-" * 38)
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        print(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    print(f"Time elapsed: {time.time() - start:0.2f} seconds")
    return results


# ------------------------------------------------------------------------------ detectron2 evaluator
def panopticapi_available() -> bool:
    """Whether panopticapi's ``utils`` and ``evaluation`` modules import."""
    try:
        importlib.import_module("panopticapi.utils")
        importlib.import_module("panopticapi.evaluation")
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _panopticapi_or_d2reg() -> Iterator[None]:
    """Inside the block, ``from panopticapi.utils import id2rgb`` and ``from panopticapi.evaluation import
    pq_compute`` give panopticapi's functions when it is installed, else d2reg's (stand-in modules in
    ``sys.modules``, removed again on exit)."""
    if panopticapi_available():
        yield
        return
    utils = types.ModuleType("panopticapi.utils", "d2reg stand-in for panopticapi.utils")
    utils.id2rgb, utils.rgb2id = id2rgb, rgb2id
    evaluation = types.ModuleType("panopticapi.evaluation", "d2reg stand-in for panopticapi.evaluation")
    evaluation.pq_compute = pq_compute
    package = types.ModuleType("panopticapi", "d2reg stand-in for panopticapi (not installed)")
    package.__path__ = []
    package.utils, package.evaluation = utils, evaluation
    stand_ins = {"panopticapi": package, "panopticapi.utils": utils, "panopticapi.evaluation": evaluation}
    saved = {name: sys.modules.pop(name) for name in stand_ins if name in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        sys.modules.update(saved)


class D2RegPanopticEvaluator(COCOPanopticEvaluator):
    """detectron2's :class:`~detectron2.evaluation.COCOPanopticEvaluator` (same interface, PNG/JSON
    conversion, ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"}}`` result in percent and
    logged table) that works without panopticapi: where detectron2 imports panopticapi's ``id2rgb``
    and ``pq_compute``, d2reg's :func:`id2rgb` and :func:`pq_compute` are used when panopticapi is not
    installed (panopticapi itself when it is).

    ``process(inputs, outputs)``: ``inputs`` are the data set dicts (``file_name``, ``image_id``), each
    output has ``"panoptic_seg": (seg, segments_info)`` with ``seg`` an (H, W) int32 tensor of segment
    ids (0: VOID) and ``segments_info`` ``[{"id", "category_id" (contiguous), "isthing" (bool)}]`` (or
    ``None`` with ``category * label_divisor + instance`` ids, -1 VOID), as for detectron2's evaluator;
    unlike detectron2's, ``isthing`` may also be a numpy / torch boolean.
    """

    def _convert_category_id(self, segment_info):
        # detectron2 tests ``isthing is True``: a numpy / torch boolean (or 1) would be taken for stuff
        if segment_info.get("isthing") is not None:
            segment_info["isthing"] = bool(segment_info["isthing"])
        return super()._convert_category_id(segment_info)

    def process(self, inputs, outputs):
        with _panopticapi_or_d2reg():
            super().process(inputs, outputs)

    def evaluate(self):
        with _panopticapi_or_d2reg():
            return super().evaluate()


def build_panoptic_evaluator(dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """detectron2's ``COCOPanopticEvaluator`` when panopticapi is installed, else
    :class:`D2RegPanopticEvaluator` (same results), for a ``coco_panoptic_seg`` data set."""
    if panopticapi_available():
        return COCOPanopticEvaluator(dataset_name, output_dir=output_dir)
    return D2RegPanopticEvaluator(dataset_name, output_dir=output_dir)
