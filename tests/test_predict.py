"""tools/predict.py (d2reg.predict) for real: tiny demo models (random init, saved as checkpoints), generated
images and video; the written results against detectron2's own inference path (DefaultPredictor / the
config's test mapper), pycocotools reading the JSON, unreadable files and missing checkpoints."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from _tools import DEMO, LAZY_TINY, TINY_INSTANCE, TINY_SEM_SEG, load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from d2reg import DINOv2Backbone, EoMT
from d2reg.config import add_d2reg_config
from d2reg.data import render_scene, rgb2id
from d2reg.predict import PredictError, Predictor, collect_inputs, predict_images

THRESHOLD = "0.1"  # random-init heads score ~1/(classes + 1): above it, below the default 0.5
SIZES = [(64, 80), (72, 64), (56, 56)]  # (H, W): not the 64-px test size, so the resize back is exercised


def _yacs_cfg(config: str, opts):
    cfg = add_d2reg_config(get_cfg())
    cfg.merge_from_file(os.path.join(DEMO, config))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _save_random(model, folder, name: str) -> str:
    DetectionCheckpointer(model, save_dir=str(folder)).save(name)
    return os.path.join(str(folder), f"{name}.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of generated scenes (PNG and JPEG) with an unreadable file sorted between them."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate(SIZES):
        rgb, _, _ = render_scene(rng, max(h, w))
        ext = "jpg" if i == 1 else "png"
        Image.fromarray(np.ascontiguousarray(rgb[:h, :w])).save(folder / f"{'a' if i < 2 else 'c'}{i}.{ext}")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("not an image extension: ignored")
    return folder


@pytest.fixture(scope="module")
def instance_model(tmp_path_factory):
    cfg = _yacs_cfg("mask_rcnn_vit_tiny_synth.yaml", TINY_INSTANCE)
    weights = _save_random(build_model(cfg), tmp_path_factory.mktemp("w"), "mask_rcnn")
    return [*TINY_INSTANCE, "MODEL.WEIGHTS", weights]


def _run(config, inputs, out, opts, *flags):
    return load_tool("predict").main(["--config-file", config, "--input", *map(str, inputs), "--output", str(out),
                                      "--no-progress", "--confidence-threshold", THRESHOLD, *flags, *opts])


def _good(images):
    return sorted(p for p in images.iterdir() if p.name[0] in "ac")


def _check_coco(out, references):
    """instances.json through pycocotools equals the reference Instances of each image, in order."""
    coco = COCO(str(out / "images.json")).loadRes(str(out / "instances.json"))
    by_name = {img["file_name"]: img for img in coco.dataset["images"]}
    total = 0
    for path, ref in references.items():
        img = by_name[str(path)]
        ref = ref[ref.scores >= float(THRESHOLD)]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(ref) and (img["height"], img["width"]) == tuple(ref.image_size)
        total += len(anns)
        boxes = BoxMode.convert(ref.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        for ann, box, score, cls, mask in zip(anns, boxes, ref.scores, ref.pred_classes, ref.pred_masks):
            np.testing.assert_allclose(ann["bbox"], box, atol=1e-3)
            assert ann["score"] == pytest.approx(float(score), abs=1e-6)
            assert ann["category_id"] == int(cls) + 1  # the synthetic set's COCO ids start at 1
            assert np.array_equal(mask_util.decode(ann["segmentation"]).astype(bool), mask.numpy())
    assert total > 0  # the comparison compared something


def test_collect_inputs(images):
    imgs, videos = collect_inputs([str(images), str(images / "a*.png")])
    assert [os.path.basename(p) for p in imgs] == ["a0.png", "a1.jpg", "b_broken.png", "c2.png", "a0.png"]
    assert videos == []
    with pytest.raises(PredictError, match="no such file"):
        collect_inputs([str(images / "missing.png")])


def test_yacs_folder_skips_unreadable_and_json_matches_the_model(instance_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(os.path.join(DEMO, "mask_rcnn_vit_tiny_synth.yaml"), [images], out, instance_model) == 0
    err = capsys.readouterr()
    assert "skipped" in err.err and "b_broken.png" in err.err
    assert "predicted 3 image(s), 1 skipped" in err.out and "s/image" in err.out
    written = sorted(os.listdir(out))
    assert written == ["a0.png", "a1.png", "c2.png", "images.json", "instances.json"], written
    for (h, w), name in zip(SIZES, ["a0.png", "a1.png", "c2.png"]):
        assert np.asarray(Image.open(out / name)).shape == (h, w, 3)
    cfg = _yacs_cfg("mask_rcnn_vit_tiny_synth.yaml", instance_model)
    reference = DefaultPredictor(cfg)  # detectron2's path: cv2 BGR in, ResizeShortestEdge, the model
    _check_coco(out, {p: reference(cv2.imread(str(p)))["instances"] for p in _good(images)})


def test_on_error_stop_keeps_the_results_before(instance_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run("demo/mask_rcnn_vit_tiny_synth.yaml", [images], out, instance_model, "--on-error", "stop") == 1
    assert "b_broken.png" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["a0.png", "a1.png", "images.json", "instances.json"]
    names = [img["file_name"] for img in json.loads((out / "images.json").read_text())["images"]]
    assert [os.path.basename(n) for n in names] == ["a0.png", "a1.jpg"]
    assert {r["image_id"] for r in json.loads((out / "instances.json").read_text())} <= {1, 2}


@pytest.mark.parametrize("config,weights_opt", [
    ("mask_rcnn_vit_tiny_synth.yaml", "MODEL.WEIGHTS {}"),
    ("mask_rcnn_vit_tiny_synth.py", "train.init_checkpoint={}"),
])
def test_missing_checkpoint_stops_before_any_output(images, tmp_path, capsys, config, weights_opt):
    missing = str(tmp_path / "nowhere" / "model_final.pth")
    opts = weights_opt.format(missing).split()
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        assert _run(os.path.join(DEMO, config), [images], out, opts) == 2
        err = capsys.readouterr().err
        assert "Checkpoint not found" in err and missing in err
    assert not fresh.exists() and os.listdir(existing) == []
    assert _run(os.path.join(DEMO, config), [images], fresh, []) == 2  # no weights at all
    assert "names no trained weights" in capsys.readouterr().err and not fresh.exists()


def test_semantic_png_is_the_model_argmax(images, tmp_path):
    cfg = _yacs_cfg("sem_fpn_vit_tiny_synth.yaml", TINY_SEM_SEG)
    opts = [*TINY_SEM_SEG, "MODEL.WEIGHTS", _save_random(build_model(cfg), tmp_path, "semfpn")]
    out = tmp_path / "out"
    assert _run("demo/sem_fpn_vit_tiny_synth.yaml", _good(images), out, opts, "--batch-size", "2") == 0
    reference = DefaultPredictor(_yacs_cfg("sem_fpn_vit_tiny_synth.yaml", opts))
    for path in _good(images):
        name = path.with_suffix(".png").name
        got = np.asarray(Image.open(out / "sem_seg" / name))
        expected = reference(cv2.imread(str(path)))["sem_seg"].argmax(0).numpy()
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
        assert np.asarray(Image.open(out / name)).shape == (*expected.shape, 3)
    assert not (out / "instances.json").exists()


def test_lazyconfig_json_matches_the_test_mapper(images, tmp_path):
    config = os.path.join(DEMO, "mask_rcnn_vit_tiny_synth.py")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), LAZY_TINY)
    weights = _save_random(instantiate(cfg.model), tmp_path, "lazy")
    out = tmp_path / "out"
    assert _run(config, _good(images), out, [*LAZY_TINY, f"train.init_checkpoint={weights}"]) == 0
    model = instantiate(cfg.model).eval()
    DetectionCheckpointer(model).load(weights)
    mapper = instantiate(cfg.dataloader.test.mapper)  # detectron2's DatasetMapper with the test resize
    refs = {}
    with torch.no_grad():
        for p in _good(images):
            h, w = np.asarray(Image.open(p)).shape[:2]
            x = mapper({"file_name": str(p), "image_id": 0, "height": h, "width": w})
            refs[p] = model([x])[0]["instances"]
    _check_coco(out, refs)


def test_video_gives_an_annotated_video(instance_model, tmp_path):
    src, frames, (h, w) = str(tmp_path / "clip.mp4"), 5, (64, 80)
    writer = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(np.ascontiguousarray(render_scene(rng, w)[0][:h, :, ::-1]))
    writer.release()
    out = tmp_path / "out"
    assert _run("demo/mask_rcnn_vit_tiny_synth.yaml", [src], out, instance_model, "--batch-size", "2") == 0
    assert os.listdir(out) == ["clip.mp4"]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    assert len(read) == frames and read[0].shape == (h, w, 3)


def test_panoptic_outputs_of_eomt(images, tmp_path):
    """EoMT's {"panoptic_seg": (seg, segments_info)}: picture, id PNG (panopticapi RGB) and panoptic.json."""
    torch.manual_seed(0)
    backbone = DINOv2Backbone(arch="vit_small", embed_dim=32, depth=2, num_heads=2, final_norm=True,
                              pretrain_img_size=64)
    model = EoMT(backbone=backbone, num_classes=6, num_queries=12, num_blocks=1, input_size=64,
                 object_mask_threshold=0.0, overlap_threshold=0.0, thing_ids=[0, 1, 2]).eval()
    meta = MetadataCatalog.get("d2reg_synth_panoptic_val")
    paths = [str(p) for p in _good(images)]
    predictor = Predictor(model, [], "RGB", meta)
    predict_images(predictor, paths, str(tmp_path), confidence_threshold=0.5, progress=False)
    pan = json.loads((tmp_path / "panoptic.json").read_text())
    assert len(pan["annotations"]) == len(paths)
    n_segments = 0
    thing_ids, stuff_ids = set(meta.thing_dataset_id_to_contiguous_id), set(meta.stuff_dataset_id_to_contiguous_id)
    for path, ann in zip(paths, pan["annotations"]):
        seg, info = predictor([np.asarray(Image.open(path).convert("RGB"))])[0]["panoptic_seg"]
        ids = rgb2id(np.asarray(Image.open(tmp_path / ann["file_name"])))
        assert np.array_equal(ids, seg.numpy())
        assert [s["id"] for s in ann["segments_info"]] == [s["id"] for s in info]
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum()) > 0
            assert s["category_id"] in (thing_ids if s["isthing"] else stuff_ids)
        n_segments += len(info)
        assert (tmp_path / os.path.basename(path)).with_suffix(".png").exists()
    assert n_segments > 0
    assert {c["id"] for c in pan["categories"]} == thing_ids | stuff_ids


EOMT_YACS = ["MODEL.D2REG.EMBED_DIM", "64", "MODEL.D2REG.DEPTH", "2", "MODEL.D2REG.NUM_HEADS", "2",
             "MODEL.EOMT.NUM_BLOCKS", "1", "MODEL.EOMT.INPUT_SIZE", "64", "MODEL.EOMT.NUM_QUERIES", "8",
             "MODEL.EOMT.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.EOMT.TEST.OVERLAP_THRESHOLD", "0.0"]
EOMT_LAZY = ["model.backbone.embed_dim=64", "model.backbone.depth=2", "model.backbone.num_heads=2",
             "model.num_blocks=1", "model.input_size=64", "model.num_queries=8", "model.object_mask_threshold=0.0",
             "model.overlap_threshold=0.0"]


@pytest.mark.parametrize("config", ["eomt_vit_tiny_synth.yaml", "eomt_vit_tiny_synth.py"])
def test_eomt_config_predicts_on_the_image_as_read(images, tmp_path, config):
    """The EoMT demo configs: no test-time resize before the model (EoMT resizes itself, as its test
    mapper feeds it), panoptic PNG = the model's own output on the image as read."""
    path = os.path.join(DEMO, config)
    if config.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(path), EOMT_LAZY)
        model = instantiate(cfg.model)
        opts = [*EOMT_LAZY, f"train.init_checkpoint={_save_random(model, tmp_path, 'eomt')}"]
    else:
        model = build_model(_yacs_cfg(config, EOMT_YACS))
        opts = [*EOMT_YACS, "MODEL.WEIGHTS", _save_random(model, tmp_path, "eomt")]
    out = tmp_path / "out"
    assert _run(path, _good(images), out, opts) == 0
    model.eval()
    n_segments = 0
    pan = json.loads((out / "panoptic.json").read_text())["annotations"]
    for p, ann in zip(_good(images), pan):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        with torch.no_grad():
            seg, info = model([{"image": torch.as_tensor(rgb.transpose(2, 0, 1).copy()).float()}])[0]["panoptic_seg"]
        assert np.array_equal(rgb2id(np.asarray(Image.open(out / ann["file_name"]))), seg.numpy())
        n_segments += len(info)
    assert n_segments > 0
