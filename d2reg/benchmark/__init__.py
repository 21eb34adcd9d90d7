"""Speed, memory and FLOP benchmark of the d2reg backbone against the alternatives.

Used by ``tools/benchmark.py`` (the CLI); the pieces are importable for tests and notebooks.

Cases (all random-initialised, nothing is downloaded), per input size S and batch size B:

=============  ==============================================================================
d2reg          :class:`DINOv2Backbone` at patch 16, input S rounded up to a multiple of 16
d2reg+sfp      the same inside detectron2's simple feature pyramid (p2-p6, 256 channels)
d2reg+sfp-ort  d2reg+sfp exported to ONNX (d2reg.export, dynamic sizes) and run by onnxruntime on the CPU
               (forward only; the report prints its speed relative to d2reg+sfp)
timm           bare timm ``vit_*_patch14_reg4_dinov2`` built at patch 16 for exactly that input
               size (no position-embedding interpolation at run time), ``forward_features``
d2reg-p14      :class:`DINOv2Backbone` at patch 14 with S rounded to the nearest multiple of 14
               (what users run without the 14->16 resize: 1022 for 1024)
hf             transformers' ``Dinov2WithRegistersBackbone`` (SDPA attention) at patch 16 and the
               d2reg input size: the same tokens, another implementation (skipped if not installed)
d2reg-ckpt     d2reg with per-block activation checkpointing (training step only)
d2reg-win      d2reg with 14x14 windowed attention, ViTDet's 4 global blocks
dinov3         :class:`DINOv3Backbone` (timm ``Eva``, RoPE, 4 storage tokens, patch 16), input S
               rounded up to a multiple of 16
dinov3+sfp     the same inside the simple feature pyramid
dinov3+sfp-ort dinov3+sfp through onnxruntime, as d2reg+sfp-ort
dinov3-timm    bare timm ``vit_*_patch16_dinov3[_qkvb]`` (``timm.create_model(..., pretrained=False)``,
               the qkv-bias variant where the official model has one) at that input size,
               ``forward_features``
dinov3-ckpt    DINOv3 with per-block activation checkpointing (training step only)
dinov3-win     DINOv3 with 14x14 windowed attention (full-grid RoPE phases), ViTDet's 4 global blocks
d2reg-eomt     :class:`d2reg.EoMT` (COCO panoptic: 133 classes, 200 queries, the arch's query blocks) on
               d2reg's backbone: forward = ``forward_logits``, masked attention off (inference);
               step = the set loss on synthetic segments, masks on in every query block
d2reg-maskrcnn d2reg's COCO Mask R-CNN LazyConfig on the same ViT, square pad = S, mask head on 100
               detections (see ``eomt_cases.py``)
dinov3-eomt,   the same on :class:`DINOv3Backbone`
dinov3-maskrcnn
=============  ==============================================================================

EoMT's targets: forward <= 1.15 x the bare backbone's (the official figure, on a GPU: the queries add
~10% tokens to the last blocks); its forward, training step and step memory against Mask R-CNN's are
reported. ``--sizes 640`` is the recipe's input.

The DINOv3 cases get the same targets as the DINOv2 ones (names prefixed "DINOv3: "): backbone forward
<= 1.05 x bare timm, window speed-up, checkpointing memory/time, FLOP/s against the ceiling. They run
for the archs DINOv3 has (vit_small, vit_base, vit_large, vit_small_plus, vit_huge_plus, vit_7b; the
DINOv2 cases for DINOv2's archs), so ``--arch vit_giant2`` skips them and ``--arch vit_7b`` the DINOv2 ones.

Timings: ``warmup`` untimed rounds, then ``repeats`` rounds in which every case runs once, the
order alternating A,B,..,B,A so that drift in a shared machine's load hits all cases alike; the
median is reported. Forward runs under ``torch.inference_mode``; the training step is forward +
backward of the mean of the outputs (parameter gradients set to None before each step).
``--dtype bf16`` runs under ``torch.autocast`` (weights stay fp32, as in mixed-precision training).

Memory: peak CUDA ``max_memory_allocated`` above the allocation before the step, or on the CPU the
peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the RSS before the
step. For the CPU numbers glibc's ``mmap`` threshold is pinned to 1 MiB in the memory pass (which
runs after all timings), so freed activations go back to the OS and RSS follows live tensors.

FLOPs: fvcore's ``FlopCountAnalysis``, which counts one multiply-add as one "flop" (MACs), plus a
handle for ``aten::scaled_dot_product_attention`` that fvcore lacks: ``q @ k^T`` and ``attn @ v``
are ``B*heads*Lq*Lk*d`` MACs each (the softmax is not counted, as fvcore counts no elementwise op).
Reported GMAC are these MACs; achieved FLOP/s = 2 * MACs / time, compared with the machine's own
dense matmul FLOP/s (``2 n^3 / t``) as the ceiling.
"""
from .eomt_cases import EOMT_CASES
from .measure import count_macs, kernel_flops, matmul_flops, sdpa_flop_jit, time_interleaved
from .report import evaluate_targets, format_report, save_report
from .run import (
    ALL_CASES,
    DEFAULT_CASES,
    DINOV2_CASES,
    DINOV3_CASES,
    STEP_CASES,
    WINDOW_SIZE,
    Case,
    make_cases,
    run_benchmark,
)

__all__ = [
    "ALL_CASES",
    "DEFAULT_CASES",
    "DINOV2_CASES",
    "DINOV3_CASES",
    "EOMT_CASES",
    "STEP_CASES",
    "WINDOW_SIZE",
    "Case",
    "count_macs",
    "evaluate_targets",
    "format_report",
    "kernel_flops",
    "make_cases",
    "matmul_flops",
    "run_benchmark",
    "save_report",
    "sdpa_flop_jit",
    "time_interleaved",
]
