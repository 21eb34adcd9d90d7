"""An independent reference for panoptic quality: panopticapi's ``pq_compute`` algorithm
(https://github.com/cocodataset/panopticapi, ``panopticapi/evaluation.py``) written out as plain
per-image, per-pixel and per-segment loops, sharing no code with d2reg. Small images only (pure Python).

``reference_pq(gt_json_file, pred_json_file, gt_folder, pred_folder)`` returns panopticapi's result dict
``{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {cat: {"pq", "sq", "rq"}}}``.
"""
from __future__ import annotations

import json
import os
from collections import Counter

from PIL import Image


def _ids(path):
    """PNG -> list of rows of segment ids (R + 256 G + 65536 B), pixel by pixel."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        px = im.load()
        return [[px[x, y][0] + 256 * px[x, y][1] + 65536 * px[x, y][2] for x in range(w)] for y in range(h)]


def _image_counts(gt_ann, pred_ann, gt_rows, pred_rows, categories, counts):
    """Add one image's TP / FP / FN / IoU sums per category to ``counts[cat] = [iou, tp, fp, fn]``."""
    gt_segms = {s["id"]: s for s in gt_ann["segments_info"]}
    pred_segms = {s["id"]: s for s in pred_ann["segments_info"]}

    pred_area = Counter()
    intersection = Counter()  # (gt id, pred id) -> pixels
    for gt_row, pred_row in zip(gt_rows, pred_rows):
        for g, p in zip(gt_row, pred_row):
            pred_area[p] += 1
            intersection[(g, p)] += 1
    for p in pred_area:
        if p not in pred_segms and p != 0:
            raise KeyError(f"segment {p} in PNG, not in JSON")
        if p in pred_segms and pred_segms[p]["category_id"] not in categories:
            raise KeyError(f"segment {p} has an unknown category")
    for p in pred_segms:
        if p not in pred_area:
            raise KeyError(f"segment {p} in JSON, not in PNG")

    def add(cat, iou=0.0, tp=0, fp=0, fn=0):
        c = counts.setdefault(cat, [0.0, 0, 0, 0])
        c[0] += iou
        c[1] += tp
        c[2] += fp
        c[3] += fn

    matched_gt, matched_pred = set(), set()
    for (g, p), inter in sorted(intersection.items()):
        if g not in gt_segms or p not in pred_segms:
            continue
        gs, ps = gt_segms[g], pred_segms[p]
        if gs["iscrowd"] == 1 or gs["category_id"] != ps["category_id"]:
            continue
        union = pred_area[p] + gs["area"] - inter - intersection.get((0, p), 0)
        if inter / union > 0.5:
            add(gs["category_id"], iou=inter / union, tp=1)
            matched_gt.add(g)
            matched_pred.add(p)

    crowd_by_category = {}
    for g, gs in gt_segms.items():
        if g in matched_gt:
            continue
        if gs["iscrowd"] == 1:
            crowd_by_category[gs["category_id"]] = g
        else:
            add(gs["category_id"], fn=1)

    for p, ps in pred_segms.items():
        if p in matched_pred:
            continue
        ignored = intersection.get((0, p), 0)
        if ps["category_id"] in crowd_by_category:
            ignored += intersection.get((crowd_by_category[ps["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        add(ps["category_id"], fp=1)


def _average(counts, categories, isthing):
    total = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    n = 0
    per_class = {}
    for cat, info in categories.items():
        if isthing is not None and (info["isthing"] == 1) != isthing:
            continue
        iou, tp, fp, fn = counts.get(cat, [0.0, 0, 0, 0])
        if tp + fp + fn == 0:
            per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        pq = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou / tp if tp else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[cat] = {"pq": pq, "sq": sq, "rq": rq}
        total["pq"] += pq
        total["sq"] += sq
        total["rq"] += rq
    return {"pq": total["pq"] / n, "sq": total["sq"] / n, "rq": total["rq"] / n, "n": n}, per_class


def reference_pq(gt_json_file, pred_json_file, gt_folder, pred_folder):
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    categories = {c["id"]: c for c in gt_json["categories"]}
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    counts = {}
    for gt_ann in gt_json["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        _image_counts(gt_ann, pred_ann, _ids(os.path.join(gt_folder, gt_ann["file_name"])),
                      _ids(os.path.join(pred_folder, pred_ann["file_name"])), categories, counts)
    results = {}
    results["All"], results["per_class"] = _average(counts, categories, None)
    results["Things"], _ = _average(counts, categories, True)
    results["Stuff"], _ = _average(counts, categories, False)
    return results
