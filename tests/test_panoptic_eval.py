"""Panoptic quality without panopticapi (d2reg.evaluation.panoptic).

- a hand-made two-image case (things, stuff, a crowd region, VOID, false positives and negatives, IoUs of
  0.52, 0.5 and 0.48) against PQ computed by hand below;
- random synthetic cases against ``tests/panopticapi_reference.py`` (panopticapi's algorithm as plain
  loops) and, when panopticapi is installed, against panopticapi itself;
- detectron2 end to end: ``register_coco_panoptic`` on files written here, ``D2RegPanopticEvaluator``
  ``process()`` with model-style outputs, ``evaluate()``.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi_reference import reference_pq
from PIL import Image

from d2reg.evaluation import (
    D2RegPanopticEvaluator,
    build_panoptic_evaluator,
    id2rgb,
    panopticapi_available,
    pq_compute,
    rgb2id,
)

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 17, "name": "sky", "isthing": 0},
    {"id": 21, "name": "grass", "isthing": 0},
    {"id": 30, "name": "water", "isthing": 0},  # never present: per-class 0, not averaged
]
THINGS, STUFF = [1, 3], [17, 21, 30]
CONTIGUOUS = {c["id"]: i for i, c in enumerate(CATEGORIES)}  # as Mask2Former: one contiguous range


def write_panoptic(folder, json_path, images, with_area=True):
    """images: [(image_id, (H, W) int id map, {segment id: (category_id, iscrowd)})] -> PNGs in
    ``folder`` + COCO panoptic JSON (gt areas counted from the map)."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, ids, segments in images:
        file_name = f"{image_id:06d}.png"
        Image.fromarray(id2rgb(ids)).save(folder / file_name)
        info = []
        for sid, (cat, crowd) in segments.items():
            seg = {"id": int(sid), "category_id": cat, "iscrowd": crowd}
            if with_area:
                seg["area"] = int((ids == sid).sum())
            info.append(seg)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": info})
    data = {"images": [{"id": i, "file_name": f"{i:06d}.jpg", "height": m.shape[0], "width": m.shape[1]}
                       for i, m, _ in images],
            "annotations": annotations, "categories": CATEGORIES}
    json_path.write_text(json.dumps(data))
    return str(json_path), str(folder)


def first(mask, n, skip=0):
    """The ``n`` first True pixels of ``mask`` in raster order after ``skip`` of them."""
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    out[ys[skip:skip + n], xs[skip:skip + n]] = True
    return out


def hand_case():
    """Two images; returns (gt images, pred images) in ``write_panoptic``'s format."""
    SKY, GRASS, P1, P2, CROWD = 0x112233, 70000, 258, 259, 3 * 65536 + 7
    gt_a = np.zeros((20, 20), np.int64)  # VOID (0) at rows 10-14, cols 10-19
    gt_a[0:5], gt_a[15:20] = SKY, GRASS
    gt_a[5:10, 0:10], gt_a[5:10, 10:20], gt_a[10:15, 0:10] = P1, P2, CROWD
    void = gt_a == 0
    pa = np.zeros_like(gt_a)
    pa[0:5] = 11                                                  # sky, exact: IoU 1
    pa[first(gt_a == P1, 26) | first(void, 10)] = 12              # person: 26 on P1 + 10 on VOID
    pa[first(gt_a == P2, 24)] = 13                                # person: 24 on P2 -> IoU 0.48
    pa[first(gt_a == CROWD, 40)] = 14                             # person inside the crowd: ignored
    pa[first(gt_a == CROWD, 10, 40) | first(void, 5, 10)] = 15    # person: 10 crowd + 5 VOID ...
    pa[15] = 15                                                   # ... + 20 on grass: area 35
    pa[16:18] = pa[18, 0:10] = 0xABCDEF                           # grass: 50 of 100 -> IoU 0.5
    gt_b = np.zeros((10, 20), np.int64)
    gt_b[0:5], gt_b[5:10, 0:10], gt_b[5:10, 10:20] = SKY, 123456, GRASS  # sky, car, grass
    pb = np.zeros_like(gt_b)
    pb[0:4], pb[4], pb[5:10, 0:10], pb[5:10, 10:20] = 1, 2, 3, 4  # sky 80/100, car FP, person FP, grass
    gt = [(1, gt_a, {SKY: (17, 0), GRASS: (21, 0), P1: (1, 0), P2: (1, 0), CROWD: (1, 1)}),
          (2, gt_b, {SKY: (17, 0), 123456: (3, 0), GRASS: (21, 0)})]
    pred = [(1, pa, {11: (17, 0), 12: (1, 0), 13: (1, 0), 14: (1, 0), 15: (1, 0), 0xABCDEF: (21, 0)}),
            (2, pb, {1: (17, 0), 2: (3, 0), 3: (1, 0), 4: (21, 0)})]
    return gt, pred


@pytest.fixture
def hand_files(tmp_path):
    gt, pred = hand_case()
    gt_json, gt_dir = write_panoptic(tmp_path / "gt", tmp_path / "gt.json", gt)
    pred_json, pred_dir = write_panoptic(tmp_path / "pred", tmp_path / "pred.json", pred)
    return gt_json, pred_json, gt_dir, pred_dir


def test_id_colour_encoding():
    ids = np.array([[0, 1, 256], [65536, 0x030201, 2**24 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 1].tolist() == [1, 2, 3] and rgb[0, 2].tolist() == [0, 1, 0]
    assert (rgb2id(rgb) == ids).all()
    assert rgb2id((1, 2, 3)) == 0x030201 and id2rgb(0x030201) == [1, 2, 3]
    assert id2rgb(np.array([[-1]], np.int32))[0, 0].tolist() == [255, 255, 255]  # as panopticapi


def test_hand_computed_pq(hand_files):
    res = pq_compute(*hand_files)
    # person: TP = 1 (segment 12: IoU = 26 / (36 + 50 - 26 - 10 VOID) = 0.52 > 0.5);
    #   FP = 3 (13: IoU 24/50 = 0.48; 15: (10 crowd + 5 VOID) / 35 <= 0.5; 3 in image 2, no person there);
    #   FN = 1 (P2); 14 lies on the crowd (40/40 > 0.5): neither TP nor FP.
    pq_person = 0.52 / (1 + 0.5 * 3 + 0.5 * 1)
    assert res["per_class"][1]["pq"] == pytest.approx(pq_person)
    assert res["per_class"][1]["sq"] == pytest.approx(0.52)
    assert res["per_class"][1]["rq"] == pytest.approx(1 / 3)
    # car: TP 0, FP 1 (row 4 of image 2), FN 1 (predicted as person) -> 0
    assert res["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    # sky: TP 2 (IoU 1 and 80/100) -> PQ = SQ = (1 + 0.8) / 2, RQ 1
    pq_sky = (1.0 + 0.8) / (2 + 0 + 0)
    assert res["per_class"][17] == pytest.approx({"pq": pq_sky, "sq": pq_sky, "rq": 1.0})
    # grass: image 1 IoU 50 / (50 + 100 - 50) = 0.5 is not > 0.5 -> FP 1 + FN 1; image 2 exact -> TP 1
    pq_grass = 1.0 / (1 + 0.5 * 1 + 0.5 * 1)
    assert res["per_class"][21] == pytest.approx({"pq": pq_grass, "sq": 1.0, "rq": 0.5})
    assert res["per_class"][30] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # no segment: not averaged
    assert res["Things"] == pytest.approx({"pq": pq_person / 2, "sq": 0.52 / 2, "rq": 1 / 6, "n": 2})
    assert res["Stuff"] == pytest.approx({"pq": (pq_sky + pq_grass) / 2, "sq": (0.9 + 1) / 2,
                                          "rq": 0.75, "n": 2})
    assert res["All"] == pytest.approx({"pq": (pq_person + pq_sky + pq_grass) / 4,
                                        "sq": (0.52 + 0.9 + 1) / 4, "rq": (1 / 3 + 1 + 0.5) / 4, "n": 4})
    assert_same(res, reference_pq(*hand_files))


def test_two_crowd_regions_of_one_category(tmp_path):
    """As panopticapi: of several crowd segments of a category only the last listed one excuses a
    prediction, so a person prediction lying wholly on the first crowd region is a false positive."""
    gt = np.full((6, 8), 7, np.int64)  # sky
    gt[2:6, 0:4], gt[2:6, 4:8] = 21, 22
    pred = np.where(gt == 21, 2, 1)
    gt_json, gt_dir = write_panoptic(tmp_path / "gt", tmp_path / "gt.json",
                                     [(1, gt, {7: (17, 0), 21: (1, 1), 22: (1, 1)})])
    pred_json, pred_dir = write_panoptic(tmp_path / "pred", tmp_path / "pred.json",
                                         [(1, pred, {1: (17, 0), 2: (1, 0)})])
    res = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    assert res["Things"]["n"] == 1 and res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert_same(res, reference_pq(gt_json, pred_json, gt_dir, pred_dir))


def assert_same(res, ref):
    assert set(res) == {"All", "Things", "Stuff", "per_class"} == set(ref)
    for name in ("All", "Things", "Stuff"):
        assert res[name]["n"] == ref[name]["n"]
        assert res[name] == pytest.approx(ref[name], rel=1e-12, abs=1e-15), name
    assert res["per_class"].keys() == ref["per_class"].keys()
    for cat in ref["per_class"]:
        assert res["per_class"][cat] == pytest.approx(ref["per_class"][cat], rel=1e-12, abs=1e-15), cat


def random_case(rng, n_images=3, h=24, w=32):
    """Random gt (stuff background, thing/stuff rectangles, crowd, VOID, a JSON-only segment, unlisted
    PNG ids) and a prediction made from it (shifted, relabelled, wrong classes, extra and VOID boxes)."""
    new_id = lambda: int(rng.integers(1, 2**24))  # noqa: E731
    cats = [c["id"] for c in CATEGORIES]
    gt, pred = [], []
    for image_id in range(1, n_images + 1):
        ids, segs = np.full((h, w), new_id(), np.int64), {}
        segs[int(ids[0, 0])] = (int(rng.choice(STUFF[:2])), 0)
        n_rects = int(rng.integers(2, 8))
        for k in range(n_rects + 1):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            dy, dx = rng.integers(3, h // 2), rng.integers(3, w // 2)
            sid = 0 if k < n_rects and rng.random() < 0.15 else new_id()  # some VOID boxes
            ids[y:y + dy, x:x + dx] = sid
            if sid:
                cat = THINGS[k % 2] if k == n_rects else int(rng.choice(cats[:4]))  # last: a thing
                segs[sid] = (cat, int(cat in THINGS and k < n_rects and rng.random() < 0.3))
        present = set(np.unique(ids).tolist())
        segs = {s: v for s, v in segs.items() if s in present}
        order = list(segs)
        rng.shuffle(order)  # which crowd segment of a category is "last" depends on this order
        segs = {s: segs[s] for s in order}
        gt.append((image_id, ids, segs))
        # prediction: the gt shifted and relabelled, some classes changed, boxes of new segments / VOID
        shifted = np.roll(ids, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        p = np.zeros_like(ids)
        psegs = {}
        for s in np.unique(shifted).tolist():
            if s == 0:
                continue
            pid = new_id()
            p[shifted == s] = pid
            cat = segs[s][0] if s in segs else int(rng.choice(cats[:4]))
            psegs[pid] = (cat if rng.random() < 0.8 else int(rng.choice(cats[:4])), 0)
        for _ in range(int(rng.integers(0, 4))):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            sid = 0 if rng.random() < 0.3 else new_id()
            p[y:y + int(rng.integers(2, 10)), x:x + int(rng.integers(2, 10))] = sid
            if sid:
                psegs[sid] = (int(rng.choice(cats[:4])), 0)
        psegs = {s: v for s, v in psegs.items() if s in set(np.unique(p).tolist())}
        pred.append((image_id, p, psegs))
    return gt, pred


def add_json_quirks(gt_json, rng):
    """A gt segment listed in the JSON but absent from the PNG (a FN with its JSON area) and a PNG id left
    out of the JSON (neither a segment nor VOID)."""
    data = json.loads(open(gt_json).read())
    ann = data["annotations"][0]
    ann["segments_info"].append({"id": 5, "category_id": 3, "iscrowd": 0, "area": 40})
    if len(ann["segments_info"]) > 3:
        ann["segments_info"].pop(int(rng.integers(0, len(ann["segments_info"]) - 1)))
    open(gt_json, "w").write(json.dumps(data))


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_random_cases(tmp_path, seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_case(rng)
    gt_json, gt_dir = write_panoptic(tmp_path / "gt", tmp_path / "gt.json", gt)
    pred_json, pred_dir = write_panoptic(tmp_path / "pred", tmp_path / "pred.json", pred)
    if seed % 2:
        add_json_quirks(gt_json, rng)
    res = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    assert_same(res, reference_pq(gt_json, pred_json, gt_dir, pred_dir))
    assert res["All"]["n"] >= 2 and 0 < res["All"]["pq"] < 1  # a real mix of matches and errors
    if panopticapi_available():  # the real thing, when installed
        from panopticapi.evaluation import pq_compute as panopticapi_pq_compute

        assert_same(res, panopticapi_pq_compute(gt_json, pred_json, gt_dir, pred_dir))


def test_default_folders_and_errors(tmp_path, hand_files):
    gt_json, pred_json, gt_dir, pred_dir = hand_files
    assert_same(pq_compute(gt_json, pred_json), pq_compute(*hand_files))  # folders: JSON path minus .json

    def with_pred(edit):
        data = json.loads(open(pred_json).read())
        edit(data)
        path = tmp_path / "edited.json"
        path.write_text(json.dumps(data))
        return pq_compute(gt_json, str(path), gt_dir, pred_dir)

    with pytest.raises(KeyError, match="presented in PNG and not presented in JSON"):
        with_pred(lambda d: d["annotations"][0]["segments_info"].pop(0))
    with pytest.raises(KeyError, match="presented in JSON and not presented in PNG"):
        with_pred(lambda d: d["annotations"][0]["segments_info"].append({"id": 99, "category_id": 1}))
    with pytest.raises(KeyError, match="unknown category_id 2"):
        with_pred(lambda d: d["annotations"][0]["segments_info"][0].update(category_id=2))
    with pytest.raises(KeyError, match="no prediction for the image with id: 2"):
        with_pred(lambda d: d["annotations"].pop(1))
    with pytest.raises(FileNotFoundError, match="predicted segmentations"):
        pq_compute(gt_json, pred_json, gt_dir, str(tmp_path / "missing"))
    gt, _ = hand_case()  # stuff only: thing pixels become VOID
    stuff_only = [(i, np.where(np.isin(m, [k for k, v in segs.items() if v[0] in STUFF]), m, 0),
                   {k: v for k, v in segs.items() if v[0] in STUFF}) for i, m, segs in gt]
    json_file, folder = write_panoptic(tmp_path / "s", tmp_path / "s.json", stuff_only)
    with pytest.raises(ZeroDivisionError, match="no thing category"):  # panopticapi divides by zero too
        pq_compute(json_file, json_file, folder, folder)

# ---------------------------------------------------------------------------- detectron2 end to end
@pytest.fixture
def registered(tmp_path, hand_files):
    name = f"d2reg_test_panoptic_{tmp_path.name}"
    meta = {"thing_classes": [c["name"] for c in CATEGORIES if c["isthing"]],
            "stuff_classes": [c["name"] for c in CATEGORIES],
            "thing_dataset_id_to_contiguous_id": {c: CONTIGUOUS[c] for c in THINGS},
            "stuff_dataset_id_to_contiguous_id": {c: CONTIGUOUS[c] for c in STUFF}}
    gt_json, _, gt_dir, _ = hand_files
    (tmp_path / "images").mkdir()
    for image_id, ids, _ in hand_case()[0]:  # load_coco_panoptic_json checks that the first image exists
        Image.fromarray(np.zeros(ids.shape + (3,), np.uint8)).save(tmp_path / "images" / f"{image_id:06d}.jpg")
    register_coco_panoptic(name, meta, str(tmp_path / "images"), gt_dir, gt_json)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def model_outputs(images):
    """A model's panoptic outputs for ``write_panoptic``-style images: segment ids 1..K, VOID 0,
    contiguous category ids and isthing."""
    outputs = []
    for _, ids, segs in images:
        seg = torch.zeros(ids.shape, dtype=torch.int32)
        info = []
        for k, (sid, (cat, _)) in enumerate(segs.items(), start=1):
            seg[torch.from_numpy(ids == sid)] = k
            info.append({"id": k, "category_id": CONTIGUOUS[cat], "isthing": cat in THINGS})
        outputs.append({"panoptic_seg": (seg, info)})
    return outputs


def run_evaluator(evaluator, inputs, outputs):
    evaluator.reset()
    for inp, out in zip(inputs, outputs):  # one image per call, as inference_on_dataset
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def test_evaluator_end_to_end(tmp_path, registered, hand_files):
    inputs = DatasetCatalog.get(registered)
    gt, pred = hand_case()
    assert [d["image_id"] for d in inputs] == [i for i, _, _ in pred]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    d2_logger = logging.getLogger("detectron2.evaluation.panoptic_evaluation")
    level = d2_logger.level
    d2_logger.addHandler(handler)
    d2_logger.setLevel(logging.INFO)
    try:
        evaluator = D2RegPanopticEvaluator(registered, output_dir=str(tmp_path / "eval"))
        res = run_evaluator(evaluator, inputs, model_outputs(pred))
    finally:
        d2_logger.removeHandler(handler)
        d2_logger.setLevel(level)
    expected = pq_compute(*hand_files)
    keys = {"PQ": ("All", "pq"), "SQ": ("All", "sq"), "RQ": ("All", "rq"), "PQ_th": ("Things", "pq"),
            "SQ_th": ("Things", "sq"), "RQ_th": ("Things", "rq"), "PQ_st": ("Stuff", "pq"),
            "SQ_st": ("Stuff", "sq"), "RQ_st": ("Stuff", "rq")}
    assert list(res) == ["panoptic_seg"] and set(res["panoptic_seg"]) == set(keys)
    for key, (group, metric) in keys.items():
        assert res["panoptic_seg"][key] == pytest.approx(100 * expected[group][metric]), key
    assert any("Panoptic Evaluation Results" in r.getMessage() for r in records)  # detectron2's table
    written = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert [s["category_id"] for s in written["annotations"][1]["segments_info"]] == [17, 3, 1, 21]
    if not panopticapi_available():
        assert "panopticapi" not in sys.modules  # the stand-in modules are gone again

    perfect = run_evaluator(evaluator, inputs, model_outputs(gt))  # crowd predicted as person: ignored
    assert perfect["panoptic_seg"] == pytest.approx({k: 100.0 for k in keys})
    # detectron2's other output format: segments_info None, ids category * label_divisor + instance, -1 VOID
    label_div = []
    for _, ids, segs in gt:
        seg = torch.full(ids.shape, -1, dtype=torch.int32)
        for k, (sid, (cat, _)) in enumerate(segs.items()):
            seg[torch.from_numpy(ids == sid)] = CONTIGUOUS[cat] * 1000 + k
        label_div.append({"panoptic_seg": (seg, None)})
    assert run_evaluator(evaluator, inputs, label_div)["panoptic_seg"] == pytest.approx(perfect["panoptic_seg"])
    tensor_bools = model_outputs(gt)  # isthing as numpy / torch booleans (detectron2 alone: stuff, KeyError)
    for out, kind in zip(tensor_bools, (np.bool_, torch.tensor)):
        for info in out["panoptic_seg"][1]:
            info["isthing"] = kind(info["isthing"])
    assert run_evaluator(evaluator, inputs, tensor_bools)["panoptic_seg"] == pytest.approx(perfect["panoptic_seg"])


def test_build_panoptic_evaluator(registered):
    evaluator = build_panoptic_evaluator(registered, None)
    if panopticapi_available():
        assert type(evaluator) is COCOPanopticEvaluator
    else:
        assert isinstance(evaluator, D2RegPanopticEvaluator)
