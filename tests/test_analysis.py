"""Diagnostics (d2reg.analysis + tools/token_norms.py, attention_maps.py, pca_features.py) on tiny
random models with high-norm tokens planted on purpose.

The planted outliers: the patch embedding gets a channel (0) that responds to "red minus green"
(pure red patches give ~8.6 there, the grey background ~-0.3); block ``K``'s MLP gets a hidden unit
that fires only when channel 0 dominates the LayerNormed token and writes 60 x a unit vector, with
LayerScale 1; all other LayerScales are shrunk so nothing else moves much. So exactly the red
patches have norms of several hundred from block ``K`` on, and about 10 before it (normal tokens
about 3-6).
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from _tools import load_tool
from PIL import Image

from d2reg.analysis import (
    attention_probs,
    fit_pca,
    load_images,
    load_model,
    neighbour_cosine,
    pca_rgb,
    peek_checkpoint,
)
from d2reg.testing import TINY_DEEP_ARCH, random_official_state_dict

D, DEPTH, HEADS = (TINY_DEEP_ARCH[k] for k in ("embed_dim", "depth", "num_heads"))
K = 2  # the block the outlier is planted in: 4 blocks give clean blocks before and after it
TINY = ["--num-heads", str(HEADS)]
# (height, width in patches, extra bottom pixels that the model pads); red patches (row, col)
RED = {"a": [(1, 2), (3, 5)], "b": [(2, 0)]}


def outlier_state_dict(registers=4, plant=True, seed=0):
    sd = random_official_state_dict("vit_small", registers, img_size=224, seed=seed, embed_dim=D, depth=DEPTH,
                                    num_heads=HEADS)
    w = sd["patch_embed.proj.weight"]
    w *= 0.1
    pixels = w.shape[-1] * w.shape[-2]
    w[0] = 0.0
    w[0, 0], w[0, 1] = 2.0 / pixels, -2.0 / pixels  # channel 0 = 2 * mean(R - G) (normalised input)
    sd["patch_embed.proj.bias"][0] = 0.0
    for i in range(DEPTH):
        sd[f"blocks.{i}.ls1.gamma"] *= 0.05
        sd[f"blocks.{i}.ls2.gamma"] *= 0.05
    if plant:
        b = f"blocks.{K}."
        sd[b + "mlp.fc1.weight"][0] = 0.0
        sd[b + "mlp.fc1.weight"][0, 0] = 10.0
        sd[b + "mlp.fc1.bias"][0] = -40.0  # fires for LayerNormed channel 0 > 4: the red patches only
        u = torch.randn(D, generator=torch.Generator().manual_seed(1))
        sd[b + "mlp.fc2.weight"][:, 1:] *= 0.05
        sd[b + "mlp.fc2.weight"][:, 0] = 60.0 * u / u.norm()
        sd[b + "ls2.gamma"] = torch.ones(D)
    return sd


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    paths = {}
    for regs in (0, 4):
        paths[f"outlier{regs}"] = str(root / f"outlier_reg{regs}.pth")
        torch.save(outlier_state_dict(regs), paths[f"outlier{regs}"])
    paths["clean4"] = str(root / "clean_reg4.pth")
    torch.save(outlier_state_dict(4, plant=False, seed=3), paths["clean4"])
    return root, paths


def write_images(folder, patch, extra=5):
    """Grey noisy images, 5 x 7 patches plus ``extra`` pixel rows (padded by the model), red patches at RED."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, reds in RED.items():
        img = np.clip(128 + rng.normal(0, 6, size=(5 * patch + extra, 7 * patch, 3)), 0, 255).astype(np.uint8)
        for r, c in reds:
            img[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = (255, 0, 0)
        Image.fromarray(img).save(os.path.join(folder, f"{name}.png"))
    return folder


def expected_outliers():
    return {(img, b, r, c) for img, reds in RED.items() for b in range(K, DEPTH) for r, c in reds}


def found(summary):
    return {(o["image"], o["block"], o["row"], o["col"]) for o in summary["outliers"]}


@pytest.mark.parametrize("patch", [14, 16])
def test_token_norms_finds_planted_outliers(files, tmp_path, patch, capsys):
    root, paths = files
    imgs = write_images(str(tmp_path / "imgs"), patch)
    out = str(tmp_path / "out")
    summary = load_tool("token_norms").main(
        [imgs, "--weights", paths["outlier4"], "--patch-size", str(patch), "--threshold", "100", "--output", out]
        + TINY
    )
    text = capsys.readouterr().out
    assert found(summary) == expected_outliers()
    with open(os.path.join(out, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk["blocks"] == summary["blocks"] and found(on_disk) == expected_outliers()
    assert on_disk["norm"] == "pre-final-norm" and "pre-final-norm" in text and "get_intermediate_layers" in text
    n_tokens = 2 * 6 * 7  # two images, 5 x 7 patches + one padded row
    for blk in on_disk["blocks"]:
        assert {"block", "min", "median", "p99", "max", "outlier_fraction"} <= set(blk)
        assert blk["min"] <= blk["median"] <= blk["p99"] <= blk["max"]
        assert blk["outlier_fraction"] == pytest.approx((3 if blk["block"] >= K else 0) / n_tokens)
    assert on_disk["blocks"][K - 1]["max"] < 30 < 300 < on_disk["blocks"][K]["max"]
    for o in on_disk["outliers"]:
        assert o["norm"] > 100
    with open(os.path.join(out, "block_norms.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["block"]) for r in rows] == list(range(DEPTH))
    with open(os.path.join(out, "outliers.csv")) as f:
        assert {(r["image"], int(r["block"]), int(r["row"]), int(r["col"])) for r in csv.DictReader(f)} == \
            expected_outliers()
    # Fig. 5a table: the outliers of the last block are exactly the 3 red patches
    sim = on_disk["neighbour_similarity"]
    assert sim["block"] == DEPTH - 1 and sim["outlier"]["count"] == 3 and sim["normal"]["count"] == n_tokens - 3
    assert "neighbour similarity" in text and "(1,2)" in text and "(3,5)" in text
    pngs = ["norm_distribution.png", "norm_by_block.png", "neighbour_cosine.png", "heatmaps/a.png", "heatmaps/b.png"]
    for png in pngs:
        with Image.open(os.path.join(out, png)) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_thresholds_relative_absolute_and_post_norm(files, tmp_path):
    root, paths = files
    imgs = write_images(str(tmp_path / "imgs"), 14)
    main = load_tool("token_norms").main
    base = [imgs, "--weights", paths["outlier0"], "--no-plots"] + TINY  # register-free, registers read from file

    rel = main(base + ["--relative", "10", "--output", str(tmp_path / "rel")])
    assert found(rel) == expected_outliers()
    assert rel["threshold"]["mode"] == "relative"
    for blk in rel["blocks"]:
        assert blk["threshold"] == pytest.approx(10 * blk["median"])
    # a low relative factor also flags the red patches before block K (~10 vs a median of ~4)
    low = main(base + ["--relative", "1.8", "--output", str(tmp_path / "low")])
    assert {(img, b, r, c) for img, b, r, c in found(low) if b < K} >= {("a", 0, 1, 2), ("b", 0, 2, 0)}
    none = main(base + ["--threshold", "1e6", "--output", str(tmp_path / "none")])
    assert none["outliers"] == [] and all(b["outlier_fraction"] == 0 for b in none["blocks"])
    # the final LayerNorm rescales every token: the outliers vanish (why norm=True hides them)
    post = main(base + ["--threshold", "100", "--post-norm", "--output", str(tmp_path / "post")])
    assert post["norm"] == "post-final-norm" and post["outliers"] == []
    assert max(b["max"] for b in post["blocks"]) < 20
    with pytest.raises(SystemExit):  # absolute and relative thresholds are exclusive
        main(base + ["--threshold", "5", "--relative", "2"])


def test_compare_two_checkpoints_side_by_side(files, tmp_path):
    root, paths = files
    imgs = write_images(str(tmp_path / "imgs"), 14)
    out = tmp_path / "cmp"
    summary = load_tool("token_norms").main(
        [os.path.join(imgs, "*.png"), "--weights", paths["outlier0"], "--compare-weights", paths["clean4"],
         "--threshold", "100", "--heatmap-blocks", "0,3", "--output", str(out)] + TINY
    )
    assert found(summary) == expected_outliers()
    with open(out / "compare" / "summary.json") as f:
        other = json.load(f)
    assert other["outliers"] == [] and other["model"]["registers"] == 4 and summary["model"]["registers"] == 0
    with Image.open(out / "heatmaps" / "a.png") as im:  # 2 blocks x 2 models
        assert im.size[0] > im.size[1] * 0.8


@pytest.mark.parametrize("patch,registers", [(14, 4), (16, 4), (16, 0)])
def test_attention_maps_shapes_non_square(files, tmp_path, patch, registers):
    root, paths = files
    folder = tmp_path / "imgs"
    folder.mkdir()
    h, w = 3 * patch + 3, 6 * patch  # non-square, height padded to 4 patch rows
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / "wide.png")
    out = tmp_path / "att"
    args = [str(folder), "--weights", paths[f"outlier{registers}"], "--patch-size", str(patch), "--output", str(out)]
    results = load_tool("attention_maps").main(args + TINY)
    (maps,) = results
    assert maps.cls.shape == (HEADS, 4, 6)
    assert maps.registers.shape == (registers, HEADS, 4, 6)
    # each attention row (patches + prefix) is a probability distribution
    total = np.concatenate([maps.cls[None], maps.registers]).sum((2, 3)) + maps.prefix_mass.sum(-1)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    saved = np.load(out / "wide_attention.npz")
    assert saved["cls"].shape == (HEADS, 4, 6) and saved["registers"].shape == (registers, HEADS, 4, 6)
    pngs = ["wide.png", "wide_cls_heads.png"] + [f"wide_reg{i}_heads.png" for i in range(registers)]
    for png in pngs:
        with Image.open(out / png) as im:
            im.load()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)


def test_attention_probs_match_fused_attention(files):
    """The recomputed probabilities reproduce the fused module's output; the model stays unchanged."""
    root, paths = files
    model = load_model(paths["outlier4"], patch_size=16, num_heads=HEADS)
    attn = model.vit.blocks[-1].attn
    fused = attn.fused_attn
    x = torch.randn(2, 3, 50, 70)
    seen = {}
    handle = attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model.vit.forward_features(x)
    handle.remove()
    with torch.no_grad():
        probs = attention_probs(attn, seen["x"])
        B, N, C = seen["x"].shape
        v = attn.qkv(seen["x"]).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)[2]
        out = attn.proj((probs @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-4)
    assert attn.fused_attn == fused and not attn._forward_pre_hooks and not attn._forward_hooks


def test_pca_shared_basis_and_foreground(files, tmp_path):
    root, paths = files
    imgs = write_images(str(tmp_path / "imgs"), 14)
    # the same picture under a second name must get identical colours (one basis for all images)
    with Image.open(os.path.join(imgs, "a.png")) as im:
        im.save(os.path.join(imgs, "a_copy.png"))
    out = tmp_path / "pca"
    res = load_tool("pca_features").main([imgs, "--weights", paths["clean4"], "--block", "1", "--output", str(out)]
                                         + TINY)
    names = [im.name for im in load_images([imgs])]
    assert names == ["a", "a_copy", "b"]
    np.testing.assert_array_equal(res.rgb[0], res.rgb[1])
    assert res.rgb[0].shape == (6, 7, 3) and 0 <= res.rgb[0].min() and res.rgb[0].max() <= 1
    assert res.explained.shape == (3,) and np.all(np.diff(res.explained) <= 1e-6)
    with Image.open(out / "a_pca.png") as im:
        assert im.size == (7 * 14, 5 * 14 + 5)  # the input's size
    with Image.open(out / "pca.png") as im:
        im.load()
    fg = load_tool("pca_features").main([imgs, "--weights", paths["clean4"], "--fg-threshold", "0.5", "--output",
                                    str(tmp_path / "fg")] + TINY)
    for rgb, mask, first in zip(fg.rgb, fg.foreground, fg.first):
        np.testing.assert_array_equal(mask, first > 0.5)
        assert np.all(rgb[~mask] == 0)
    assert 0 < np.mean(np.concatenate([m.ravel() for m in fg.foreground])) < 1


def test_fit_pca_and_pca_rgb_on_known_directions():
    g = torch.Generator().manual_seed(0)
    direction = torch.zeros(16)
    direction[3] = 1.0
    x = torch.randn(400, 16, generator=g) * 0.1 + torch.randn(400, 1, generator=g) * 5 * direction
    mean, comps, explained = fit_pca(x)
    assert abs(float(comps[:, 0] @ direction)) > 0.99 and explained[0] > 0.9
    a, b = x[:200].reshape(10, 20, 16), x[200:].reshape(20, 10, 16)
    res = pca_rgb([a, b])
    assert [r.shape for r in res.rgb] == [(10, 20, 3), (20, 10, 3)]
    # first colour channel follows the dominant direction (up to its sign)
    corr = np.corrcoef(res.rgb[0][..., 0].ravel(), a[..., 3].reshape(-1).numpy())[0, 1]
    assert abs(corr) > 0.95


def test_neighbour_cosine_matches_brute_force():
    feat = torch.randn(4, 5, 8)
    got = neighbour_cosine(feat)
    f = torch.nn.functional.normalize(feat, dim=-1)
    for i in range(4):
        for j in range(5):
            steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
            nb = [(i + di, j + dj) for di, dj in steps if 0 <= i + di < 4 and 0 <= j + dj < 5]
            want = sum(float(f[i, j] @ f[a, b]) for a, b in nb) / len(nb)
            assert float(got[i, j]) == pytest.approx(want, abs=1e-6)


def test_inputs_glob_dataset_resize_and_random_init(files, tmp_path, capsys):
    from detectron2.data import DatasetCatalog

    root, paths = files
    imgs = write_images(str(tmp_path / "imgs"), 14)
    name = "d2reg_test_analysis_images"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [{"file_name": os.path.join(imgs, "b.png"), "image_id": 0}])
    got = load_images([os.path.join(imgs, "a.png"), name, os.path.join(imgs, "*.png")], resize=[28])
    assert [im.name for im in got] == ["a", "b", "a_1", "b_1"]
    assert min(got[0].size) == 28
    assert load_images([imgs], resize=[30, 50], max_images=1)[0].size == (30, 50)
    with pytest.raises(FileNotFoundError, match="registered detectron2 data set"):
        load_images(["no_such_file_or_dataset"])
    info = peek_checkpoint(paths["outlier0"])
    assert (info.embed_dim, info.depth, info.num_register_tokens, info.format) == (D, DEPTH, 0, "official")
    model = load_model("", arch="vit_small", registers=2, depth=1, patch_size=16)
    assert "RANDOMLY INITIALISED" in capsys.readouterr().out
    assert model.num_prefix_tokens == 3 and model.grid(33, 48) == (3, 3)


def test_heatmap_blocks_choice():
    from d2reg.analysis.norms_report import heatmap_blocks

    outl = [[{"image": "a", "block": b} for b in range(2, 12)], [{"image": "b", "block": 1}]]
    assert heatmap_blocks("all", 4, outl, "a") == [0, 1, 2, 3]
    assert heatmap_blocks("0,-1,5", 12, outl, "a") == [0, 5, 11]
    assert heatmap_blocks("auto", 12, outl, "b") == [1]
    assert heatmap_blocks("auto", 12, outl, "c") == [11]  # no outliers: the last block
    spread = heatmap_blocks("auto", 12, outl, "a")
    assert len(spread) == 8 and spread[0] == 2 and spread[-1] == 11 and spread == sorted(set(spread))
