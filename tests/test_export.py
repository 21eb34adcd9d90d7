"""ONNX export (d2reg.export, tools/export_onnx.py), checked by running onnxruntime beside PyTorch.

Backbones are exported once with dynamic N, H, W and compared at three sizes the export never traced;
the whole Mask R-CNN and semantic-segmentation demo models go through detectron2's TracingAdapter.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from _tools import DEMO, LAZY_TINY, TINY_INSTANCE, TINY_SEM_SEG, load_tool
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from dinov3_reference import random_official_dinov3_state_dict

from d2reg import DINOv2Backbone, DINOv3Backbone, MultiLayerFeaturePyramid, SimpleFeaturePyramid
from d2reg.export import (
    ExportError,
    default_verify_sizes,
    dynamic_size_range,
    export_backbone,
    export_model,
    format_report,
    model_from_config,
    onnx_input_dims,
    verify_backbone,
    verify_model,
)
from d2reg.testing import TINY_ARCH, TINY_DEEP_ARCH, TINY_IMG, write_checkpoint, write_random_checkpoint
from d2reg.vit.pos_embed import bicubic_resize_matrix, interpolate_pos_embed, interpolate_pos_embed_by_matrices

TINY_V3 = dict(embed_dim=128, depth=2, num_heads=2)


# ------------------------------------------------------------------ position embeddings as matrices
@pytest.mark.parametrize("legacy", [False, True], ids=["antialias", "legacy-offset"])
def test_matrix_resize_equals_pytorch_interpolation(legacy):
    """The exported form of the position-embedding resize is PyTorch's bicubic (antialiased for the
    register models, the 0.1-offset scale-factor path without), shrinking, enlarging and unchanged."""
    table = torch.randn(1, 16 * 16, 8, generator=torch.Generator().manual_seed(0))
    for grid in [(16, 16), (5, 9), (23, 40), (64, 17), (2, 3), (16, 31)]:
        ref = interpolate_pos_embed(table, grid, legacy)
        got = interpolate_pos_embed_by_matrices(table, grid, legacy)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


def test_matrix_is_exact_identity_at_the_stored_size():
    eye = bicubic_resize_matrix(37, 37, legacy_offset=False)
    torch.testing.assert_close(eye, torch.eye(37), atol=0, rtol=0)
    up = bicubic_resize_matrix(50, 37, legacy_offset=False)
    ref = F.interpolate(torch.eye(37)[None, None], size=(50, 37), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(up, ref[0, 0], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ backbones, dynamic N, H, W
def _dinov2(tmp_path, registers: int, window: bool):
    path = str(tmp_path / "w.pth")
    write_random_checkpoint(path, "official", "vit_small", registers, img_size=TINY_IMG, **TINY_ARCH)
    return DINOv2Backbone(arch="vit_small", num_register_tokens=registers, weights=path, pretrain_img_size=TINY_IMG,
                          window_size=4 if window else 0, window_block_indexes=(0,) if window else (), **TINY_ARCH)


def _dinov3(tmp_path, window: bool):
    path = write_checkpoint(str(tmp_path / "v3.pth"), random_official_dinov3_state_dict("vit_small", seed=3, **TINY_V3))
    return DINOv3Backbone(arch="vit_small", weights=path, window_size=4 if window else 0,
                          window_block_indexes=(0,) if window else (), **TINY_V3)


def _pyramid(net):
    return SimpleFeaturePyramid(net=net, in_feature="last_feat", out_channels=16, scale_factors=(4.0, 2.0, 1.0, 0.5),
                                top_block=LastLevelMaxPool())


CASES = {
    "dinov2-reg-pyramid": lambda tmp: _pyramid(_dinov2(tmp, 4, window=False)),
    "dinov2-noreg": lambda tmp: _dinov2(tmp, 0, window=False),
    "dinov2-reg-windowed-pyramid": lambda tmp: _pyramid(_dinov2(tmp, 4, window=True)),
    "dinov3-windowed": lambda tmp: _dinov3(tmp, window=True),
    "frozen-multilayer-concat": lambda tmp: MultiLayerFeaturePyramid(
        DINOv2Backbone(arch="vit_small", out_indices=(0, 1, 2, 3), freeze_at="all", pretrain_img_size=TINY_IMG,
                       **TINY_DEEP_ARCH), 16, mode="concat", top_block=LastLevelMaxPool()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dynamic_backbone_export_matches_pytorch_at_unseen_sizes(case, tmp_path):
    backbone = CASES[case](tmp_path).eval()
    result = export_backbone(backbone, str(tmp_path / "backbone.onnx"))
    assert result.dynamic and not result.notes
    assert result.output_names == list(backbone.output_shape())
    dims = onnx_input_dims(result.path)[0]
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims  # N, H, W symbolic
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    assert "Attention" in ops  # opset 23: one fused attention node per product

    low, _ = dynamic_size_range(backbone)
    stride = max(s.stride for s in backbone.output_shape().values())
    sizes = default_verify_sizes(low, stride)
    assert sizes[2][0] % 32 and sizes[2][1] % 32
    rows = verify_backbone(backbone, result.path, sizes, batch=1) + verify_backbone(backbone, result.path, sizes[:1],
                                                                                     batch=3)
    print(format_report(rows))
    assert len(rows) == 4 * len(result.output_names)
    assert all(r.ok and r.rel <= 1e-4 for r in rows), format_report(rows)


def test_verification_detects_a_different_model(tmp_path):
    """The check can fail: the graph of one model against slightly different PyTorch weights."""
    backbone = _dinov2(tmp_path, 4, window=False).eval()
    result = export_backbone(backbone, str(tmp_path / "b.onnx"), static_size=(64, 96))
    assert onnx_input_dims(result.path)[0] == [1, 3, 64, 96] and not result.dynamic
    assert all(r.ok for r in verify_backbone(backbone, result.path, [(64, 96)]))
    with torch.no_grad():
        backbone.vit.blocks[0].mlp.fc2.bias.add_(0.05)
    rows = verify_backbone(backbone, result.path, [(64, 96)])
    assert not any(r.ok for r in rows)


# ------------------------------------------------------------------ whole models through the tool
def _tool_args(config, output, *opts, backbone_only=False):
    return ["--config-file", os.path.join(DEMO, config), "--output", str(output),
            *(["--backbone-only"] if backbone_only else []), *opts]


def test_tool_exports_and_verifies_the_demo_mask_rcnn(tmp_path, capsys):
    tool = load_tool("export_onnx")
    assert tool.main(_tool_args("mask_rcnn_vit_tiny_synth.yaml", tmp_path, *TINY_INSTANCE)) == 0
    out = capsys.readouterr().out
    assert "outputs ['boxes', 'classes', 'masks', 'scores', 'image_size']" in out
    assert "verified: all outputs match" in out and "MISMATCH" not in out
    dims = onnx_input_dims(str(tmp_path / "model.onnx"))[0]
    assert dims[0] == 3 and all(isinstance(d, str) for d in dims[1:])


def test_tool_backbone_only_from_a_lazyconfig(tmp_path, capsys):
    tool = load_tool("export_onnx")
    assert tool.main(_tool_args("mask_rcnn_vit_tiny_synth.py", tmp_path, *LAZY_TINY, backbone_only=True)) == 0
    out = capsys.readouterr().out
    assert "verified: all outputs match" in out
    assert os.path.exists(tmp_path / "backbone.onnx")


def test_semantic_segmentation_model_export_matches(tmp_path):
    model = model_from_config(os.path.join(DEMO, "sem_fpn_vit_tiny_synth.yaml"), TINY_SEM_SEG)
    result = export_model(model, str(tmp_path / "model.onnx"), example_size=(96, 128))
    assert result.output_names == ["sem_seg"]
    rows = verify_model(model, result.path, [(80, 80), (64, 112), (75, 99)])
    assert all(r.ok for r in rows), format_report(rows)
    logits = [r for r in rows if r.output == "sem_seg"]
    assert len(logits) == 3 and max(r.rel for r in logits) <= 1e-4


# ------------------------------------------------------------------ what cannot be exported
def test_unsupported_requests_raise_clear_errors(tmp_path):
    backbone = _dinov2(tmp_path, 4, window=False)
    with pytest.raises(ExportError, match="opset >= 17"):
        export_backbone(backbone, str(tmp_path / "x.onnx"), opset=13)
    with pytest.raises(ExportError, match="GeneralizedRCNN .* SemanticSegmentor.*--backbone-only"):
        export_model(torch.nn.Sequential(backbone), str(tmp_path / "x.onnx"))
    with pytest.raises(ExportError, match="no d2reg ViT backbone"):
        export_backbone(torch.nn.Conv2d(3, 3, 1), str(tmp_path / "x.onnx"))
    with pytest.raises(ValueError, match="expected a YACS .yaml or a LazyConfig .py"):
        model_from_config(str(tmp_path / "config.json"))


def test_export_leaves_eager_model_unchanged(tmp_path):
    """Recording switches the ViT to its exportable paths only while exporting; training mode is restored."""
    backbone = _pyramid(_dinov2(tmp_path, 4, window=True))
    x = torch.randn(1, 3, 96, 160)
    backbone.eval()
    with torch.no_grad():
        before = backbone(x)["p4"]
    backbone.train()
    export_backbone(backbone, str(tmp_path / "b.onnx"))
    assert backbone.training
    backbone.eval()
    with torch.no_grad():
        after = backbone(x)["p4"]
    np.testing.assert_array_equal(before.numpy(), after.numpy())


def test_benchmark_times_onnxruntime_beside_pytorch():
    """tools/benchmark.py's onnxruntime case: the exported backbone + pyramid, timed in the same
    interleaved rounds as PyTorch eager, and the speed ratio reported."""
    from d2reg.benchmark import format_report, run_benchmark
    from d2reg.benchmark.report import onnxruntime_ratios

    report = run_benchmark(sizes=[64], cases=["d2reg+sfp", "d2reg+sfp-ort"], step_cases=[], warmup=0, repeats=1,
                           memory=False, flops=False, arch_overrides=dict(TINY_ARCH), pretrain_img_size=TINY_IMG,
                           log=lambda s: None)
    rows = {r["case"]: r for r in report["results"]}
    assert rows["d2reg+sfp-ort"]["fwd_s"] > 0 and rows["d2reg+sfp"]["fwd_s"] > 0
    ratios = onnxruntime_ratios(report["results"])
    assert [r["case"] for r in ratios] == ["d2reg+sfp-ort"] and ratios[0]["speedup"] > 0
    assert "onnxruntime / PyTorch eager forward" in format_report(report)


def test_merged_lora_backbone_exports(tmp_path):
    """A LoRA fine-tuned backbone, merged (plain nn.Linear again), exports and matches like any other."""
    from d2reg.modeling.lora import merge_lora

    path = str(tmp_path / "w.pth")
    write_random_checkpoint(path, "official", "vit_small", 4, img_size=TINY_IMG, **TINY_ARCH)
    backbone = DINOv2Backbone(arch="vit_small", weights=path, pretrain_img_size=TINY_IMG,
                              lora=dict(rank=4, targets=("qkv", "proj")), **TINY_ARCH)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # a trained adapter: not the zero initialisation
    assert merge_lora(backbone) > 0
    backbone.eval()
    result = export_backbone(backbone, str(tmp_path / "b.onnx"))
    rows = verify_backbone(backbone, result.path, [(64, 64), (48, 80), (61, 77)])
    assert result.dynamic and all(r.ok for r in rows), format_report(rows)
