"""Benchmark cases (d2reg, timm, HF, ...) and the interleaved timing / memory runs over them."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..modeling import DINOv2Backbone, DINOv3Backbone, SimpleFeaturePyramid
from ..modeling.window import default_window_block_indexes
from ..vit import ARCHS, get_arch
from ..vit.dinov3 import DINOV3_ARCHS, get_dinov3_arch
from .eomt_cases import EOMT_CASES, eomt_case, mask_rcnn_case
from .measure import (
    _autocast,
    _CpuPeak,
    _cuda_peak,
    _matmul_probe,
    _outputs,
    count_macs,
    kernel_flops,
    matmul_flops,
    parameter_counts,
    saved_tensor_bytes,
    tensor_peak_bytes,
    time_interleaved,
)
from .onnx_case import OnnxRuntimeBackbone, onnxruntime_available
from .report import evaluate_targets

# Training recipes of the memory table: backbone kwargs on top of "<family>+sfp" (full fine-tuning); a
# new recipe is one entry here (its cases "d2reg+sfp-<name>" / "dinov3+sfp-<name>" follow).
MEMORY_RECIPES: Dict[str, dict] = {
    "ckpt": dict(use_act_checkpoint=True),
    "frozen": dict(freeze_at="all"),
    "frozen-bf16": dict(freeze_at="all", frozen_dtype="bfloat16"),
    "lora": dict(lora=dict(rank=8, targets=("qkv", "proj"))),  # every block's attention, rank 8
}
MEMORY_CASES = tuple(f"{base}-{r}" for base in ("d2reg+sfp", "dinov3+sfp") for r in MEMORY_RECIPES)
MEMORY_TABLE_CASES = ("d2reg+sfp", "dinov3+sfp") + MEMORY_CASES  # their steps get the tensor-level memory
ORT_CASES = ("d2reg+sfp-ort", "dinov3+sfp-ort")  # onnxruntime (CPU) on the exported backbone + pyramid
DINOV2_CASES = ("d2reg", "d2reg+sfp", "d2reg+sfp-ort", "timm", "d2reg-p14", "hf", "d2reg-ckpt", "d2reg-win") + tuple(
    n for n in MEMORY_CASES + EOMT_CASES if n.startswith("d2reg"))
DINOV3_CASES = ("dinov3", "dinov3+sfp", "dinov3+sfp-ort", "dinov3-timm", "dinov3-ckpt", "dinov3-win") + tuple(
    n for n in MEMORY_CASES + EOMT_CASES if n.startswith("dinov3"))
ALL_CASES = DINOV2_CASES + DINOV3_CASES
DEFAULT_CASES = tuple(n for n in ALL_CASES if n not in EOMT_CASES)  # the backbone benchmark; EoMT's by name
STEP_CASES = ("d2reg", "d2reg-ckpt", "d2reg-win", "dinov3", "dinov3-ckpt", "dinov3-win")  # training step timed
WINDOW_SIZE = 14


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One model at one input size: ``build()`` -> module, ``call(module, x)`` -> outputs."""

    name: str
    size: int  # input side in pixels (square input)
    patch: int
    build: Callable[[], nn.Module]
    call: Optional[Callable[[nn.Module, torch.Tensor], object]] = None  # None: module(x)
    step: bool = True  # measure the training step (run_benchmark: if named in step_cases)
    flops: bool = True  # count its MACs with fvcore (False: not a torch graph, e.g. onnxruntime)
    memory: bool = True  # measure its peak (False: onnxruntime keeps its arena from the first run: no delta)
    forward: bool = True  # measure the forward (run_benchmark: if named in cases)
    module: Optional[nn.Module] = field(default=None, repr=False)

    def run(self, module: nn.Module, x: torch.Tensor):
        return module(x) if self.call is None else self.call(module, x)

    def get(self, device) -> nn.Module:
        if self.module is None:
            torch.manual_seed(0)
            self.module = self.build().to(device)
        return self.module


def _timm_name(arch: str, num_register_tokens: int) -> str:
    base = {"vit_small": "vit_small", "vit_base": "vit_base", "vit_large": "vit_large", "vit_giant2": "vit_giant"}
    return f"{base[arch]}_patch14_{'reg4_' if num_register_tokens else ''}dinov2"


def _specs(arch: str, arch_overrides: Optional[dict]):
    """(DINOv2 spec or None, DINOv3 spec or None): ``arch`` in each family's table (vit_small / base /
    large are in both; vit_giant2 is DINOv2 only; vit_small_plus / huge_plus / 7b are DINOv3 only)."""
    over = {k: v for k, v in (arch_overrides or {}).items() if v}
    v2 = get_arch(arch, **over) if arch in ARCHS else None
    v3 = get_dinov3_arch(arch, **over) if arch in DINOV3_ARCHS else None
    if v2 is None and v3 is None:
        raise ValueError(f"unknown arch {arch!r}: DINOv2 {sorted(ARCHS)}, DINOv3 {sorted(DINOV3_ARCHS)}")
    return v2, v3


def make_cases(arch: str, size: int, names: Sequence[str], num_register_tokens: int = 4,
               arch_overrides: Optional[dict] = None, pretrain_img_size: int = 518,
               log: Callable[[str], None] = print) -> List[Case]:
    """The benchmark's cases at input ``size`` (see the module doc); unknown names raise. Cases of a
    family that has no ``arch`` (e.g. DINOv3 cases for vit_giant2) are skipped with a note."""

    arch_overrides = {k: v for k, v in (arch_overrides or {}).items() if v}
    spec, spec3 = _specs(arch, arch_overrides)
    v3_over = {k: arch_overrides[k] for k in ("embed_dim", "depth", "num_heads") if k in arch_overrides}
    s16 = -(-size // 16) * 16
    s14 = max(14, round(size / 14) * 14)
    common = dict(arch=arch, num_register_tokens=num_register_tokens, pretrain_img_size=pretrain_img_size,
                  **arch_overrides)

    def backbone(**kw):
        return lambda: DINOv2Backbone(**common, **kw)

    def backbone3(**kw):
        return lambda: DINOv3Backbone(arch=arch, **v3_over, **kw)

    def pyramid(make=lambda: DINOv2Backbone(**common)):

        return SimpleFeaturePyramid(make(), "last_feat", 256, (4.0, 2.0, 1.0, 0.5), LastLevelMaxPool(), "LN")

    def bare_timm3():
        import timm

        # timm's own DINOv3 model (vit_*_patch16_dinov3[_qkvb]: the qkv-bias variant where the official
        # model has a qkv bias), random init, at exactly this input size
        return timm.create_model(spec3.timm_name, pretrained=False, img_size=s16, num_classes=0, **v3_over)

    def bare_timm():
        import timm

        return timm.create_model(
            _timm_name(arch, num_register_tokens), pretrained=False, patch_size=16, img_size=s16, num_classes=0,
            embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
        )

    def hf():
        from transformers import Dinov2WithRegistersBackbone, Dinov2WithRegistersConfig

        cfg = Dinov2WithRegistersConfig(
            hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
            patch_size=16, image_size=pretrain_img_size, num_register_tokens=num_register_tokens,
            use_swiglu_ffn=spec.swiglu, layerscale_value=1e-5, out_features=[f"stage{spec.depth}"],
        )
        cfg._attn_implementation = "sdpa"
        return Dinov2WithRegistersBackbone(cfg)

    table = {
        "d2reg": lambda: Case("d2reg", s16, 16, backbone()),
        "d2reg+sfp": lambda: Case("d2reg+sfp", s16, 16, pyramid),
        "timm": lambda: Case("timm", s16, 16, bare_timm, call=lambda m, x: m.forward_features(x)),
        "d2reg-p14": lambda: Case("d2reg-p14", s14, 14, backbone(patch_size=14)),
        "hf": lambda: Case("hf", s16, 16, hf),
        "d2reg-ckpt": lambda: Case("d2reg-ckpt", s16, 16, backbone(use_act_checkpoint=True), forward=False),
        "d2reg-win": lambda: Case("d2reg-win", s16, 16, backbone(
            window_size=WINDOW_SIZE, window_block_indexes=default_window_block_indexes(spec.depth))),
        "dinov3": lambda: Case("dinov3", s16, 16, backbone3()),
        "dinov3+sfp": lambda: Case("dinov3+sfp", s16, 16, lambda: pyramid(backbone3())),
        "d2reg+sfp-ort": lambda: Case("d2reg+sfp-ort", s16, 16, lambda: OnnxRuntimeBackbone(pyramid()), step=False,
                                      flops=False, memory=False),
        "dinov3+sfp-ort": lambda: Case("dinov3+sfp-ort", s16, 16, lambda: OnnxRuntimeBackbone(pyramid(backbone3())),
                                       step=False, flops=False, memory=False),
        "dinov3-timm": lambda: Case("dinov3-timm", s16, 16, bare_timm3, call=lambda m, x: m.forward_features(x)),
        "dinov3-ckpt": lambda: Case("dinov3-ckpt", s16, 16, backbone3(use_act_checkpoint=True), forward=False),
        "dinov3-win": lambda: Case("dinov3-win", s16, 16, backbone3(
            window_size=WINDOW_SIZE, window_block_indexes=default_window_block_indexes(spec3.depth))),
    }
    for name, family, make in (("d2reg", "dinov2", backbone), ("dinov3", "dinov3", backbone3)):
        net = dict(common) if family == "dinov2" else dict(arch=arch, **v3_over)
        table[f"{name}-eomt"] = lambda name=name, make=make: Case(
            f"{name}-eomt", s16, 16, *eomt_case(lambda **kw: make(**kw)(), arch, s16))
        table[f"{name}-maskrcnn"] = lambda name=name, family=family, net=net: Case(
            f"{name}-maskrcnn", s16, 16, *mask_rcnn_case(family, s16, net), flops=False)
    for r, kw in MEMORY_RECIPES.items():  # step-only cases of the memory table (backbone + pyramid)
        table[f"d2reg+sfp-{r}"] = lambda r=r, kw=kw: Case(f"d2reg+sfp-{r}", s16, 16, lambda: pyramid(backbone(**kw)),
                                                          forward=False)
        table[f"dinov3+sfp-{r}"] = lambda r=r, kw=kw: Case(f"dinov3+sfp-{r}", s16, 16,
                                                           lambda: pyramid(backbone3(**kw)), forward=False)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown benchmark cases {unknown}; choose from {list(table)}")
    cases = []
    skipped = [n for n in names if (n in DINOV3_CASES and spec3 is None) or (n in DINOV2_CASES and spec is None)]
    if skipped:
        log(f"  {arch} is not an arch of the family of {skipped}: skipped")
    for n in names:
        if n in skipped:
            continue
        if n == "hf":
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        if n in ORT_CASES and not onnxruntime_available():
            log(f"  {n}: onnxruntime is not installed (pip install -e .[export]): skipped")
            continue
        cases.append(table[n]())
    return cases


# ---------------------------------------------------------------------------------------- running
def _forward_fn(case: Case, x: torch.Tensor, dtype: str) -> Callable[[], None]:
    model = case.get(x.device).eval()

    def run():
        with torch.inference_mode(), _autocast(x.device, dtype):
            case.run(model, x)

    return run


def _step_fn(case: Case, x: torch.Tensor, dtype: str) -> Callable[[], None]:
    model = case.get(x.device).train()

    def run():
        for p in model.parameters():
            p.grad = None
        with _autocast(x.device, dtype):
            outs = _outputs(case.run(model, x))
        sum(o.float().mean() for o in outs).backward()

    return run


def _step_tensor_memory(model: nn.Module, fn: Callable[[], None], device: torch.device, cuda_peak) -> dict:
    """Tensor-level memory of one training step (from no gradients): the peak of allocated tensors above
    the weights (CPU: torch.profiler; CUDA: ``max_memory_allocated``), the activations saved for backward
    (saved-tensor hooks), and the parameter counts with their gradient + AdamW state."""
    def clear():
        for p in model.parameters():
            p.grad = None

    clear()
    peak = tensor_peak_bytes(fn) if device.type == "cpu" else cuda_peak
    clear()
    saved = saved_tensor_bytes(fn, exclude=model)
    return {"step_tensor_peak_mib": peak / 2 ** 20, "step_saved_mib": saved / 2 ** 20, **parameter_counts(model)}


def memory_table(report: dict) -> str:
    """Markdown table of the training-step memory of the step cases (one row per case, size, batch)."""
    lines = ["| case | input | batch | trainable / all params (M) | weights MiB | saved activations MiB (hooks) | "
             "step tensor peak MiB (activations + grads) | + AdamW moments MiB | step RSS peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r.get("step_tensor_peak_mib") is None:
            continue
        rss = f"{r['step_peak_mib']:.0f}" if r.get("step_peak_mib") is not None else "–"
        lines.append(
            f"| {r['case']} | {r['input']}² | {r['batch']} | {r['trainable'] / 1e6:.2f} / {r['params'] / 1e6:.1f} | "
            f"{r['weights_mib']:.0f} | {r['step_saved_mib']:.0f} | {r['step_tensor_peak_mib']:.0f} | "
            f"{r['adamw_mib']:.0f} | {rss} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_benchmark(
    arch: str = "vit_small",
    sizes: Sequence[int] = (1024,),
    batch_sizes: Sequence[int] = (1,),
    cases: Sequence[str] = DEFAULT_CASES,
    step_cases: Sequence[str] = STEP_CASES,
    device: str = "cpu",
    dtype: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    flops: bool = True,
    num_register_tokens: int = 4,
    arch_overrides: Optional[dict] = None,
    pretrain_img_size: int = 518,
    log: Callable[[str], None] = print,
    timing: bool = True,
) -> dict:
    """Run the benchmark; returns a JSON-able dict (``machine``, ``ceiling``, ``results``, ``targets``).
    ``timing=False``: the memory pass only (no timed rounds, no matmul ceiling)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    report = {
        "config": dict(arch=arch, sizes=list(sizes), batch_sizes=list(batch_sizes), cases=list(cases),
                       step_cases=list(step_cases), device=device, dtype=dtype, warmup=warmup, repeats=repeats,
                       num_register_tokens=num_register_tokens, arch_overrides=arch_overrides or {}),
        "machine": _machine(dev),
        "loadavg_start": _loadavg(),
        "ceiling": {},
        "results": [],
    }
    log(f"machine: {report['machine']['cpu']}, {report['machine']['threads']} threads"
        + (f", {report['machine']['gpu']}" if "gpu" in report["machine"] else ""))
    if timing:
        report["ceiling"]["fp32"] = matmul_flops(dev, torch.float32)
        if dtype == "bf16" or dev.type == "cuda":
            report["ceiling"]["bf16"] = matmul_flops(dev, torch.bfloat16)
        log("matmul ceiling: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in report["ceiling"].items()))

    rows: List[dict] = []
    pending_memory = []
    for size in sizes:
        names = list(dict.fromkeys(list(cases) + list(step_cases)))
        size_cases = make_cases(arch, size, names, num_register_tokens, arch_overrides, pretrain_img_size, log)
        for c in size_cases:
            c.forward = c.forward and c.name in cases
            c.step = c.step and c.name in step_cases
        size_cases = [c for c in size_cases if c.forward or c.step]  # e.g. a step-only case named in cases
        if dev.type != "cpu":  # onnxruntime runs here on the CPU: no comparison with a GPU forward
            size_cases = [c for c in size_cases if c.name not in ORT_CASES]
        macs: Dict[str, Optional[dict]] = {}
        if flops:
            for c in [c for c in size_cases if c.forward and c.flops]:
                x1 = torch.randn(1, 3, c.size, c.size, device=dev)
                model = c.get(dev).eval()
                try:
                    macs[c.name] = count_macs(model, x1, c.call)
                except Exception as e:  # noqa: BLE001 - tracing of third-party models may fail
                    log(f"  fvcore could not trace {c.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    macs[c.name] = None
        for bs in batch_sizes:
            inputs = {c.name: torch.randn(bs, 3, c.size, c.size, device=dev) for c in size_cases}
            fwd = {c.name: _forward_fn(c, inputs[c.name], dtype) for c in size_cases if c.forward}
            t_fwd = {}
            ceiling = report["ceiling"].get("bf16" if dtype == "bf16" else "fp32")
            if fwd and timing:
                log(f"size {size}, batch {bs}: forward of {list(fwd)} ...")
                probe, probe_flops = _matmul_probe(dev, torch.bfloat16 if dtype == "bf16" else torch.float32)
                t_fwd = time_interleaved({**fwd, "_matmul": probe}, dev, warmup, repeats)
                ceiling = probe_flops / statistics.median(t_fwd.pop("_matmul"))
                report.setdefault("ceiling_interleaved", []).append(dict(size=size, batch=bs, flops=ceiling))
                log(f"  matmul ceiling sampled among the forwards: {ceiling / 1e12:.3f} TFLOP/s")
            steps = {c.name: _step_fn(c, inputs[c.name], dtype) for c in size_cases if c.step}
            t_step = {}
            if steps and timing:
                log(f"size {size}, batch {bs}: training step of {list(steps)} ...")
                t_step = time_interleaved(steps, dev, warmup, repeats)
            base = None if not timing else "d2reg" if "d2reg" in fwd else "dinov3" if "dinov3" in fwd else None
            if base is not None:
                v2, v3 = _specs(arch, arch_overrides)
                spec = v2 if base == "d2reg" else v3
                d2 = next(c for c in size_cases if c.name == base)
                tokens = (d2.size // d2.patch) ** 2 + 1 + (num_register_tokens if base == "d2reg" else 4)
                kern = kernel_flops(bs, tokens, spec.embed_dim, spec.num_heads, dev, dtype)
                report.setdefault("kernels", []).append(dict(size=size, batch=bs, tokens=tokens, **kern))
                log("  kernels: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in kern.items()))
            for c in size_cases:
                m = macs.get(c.name)
                row = {"case": c.name, "size": size, "input": c.size, "patch": c.patch, "batch": bs,
                       "tokens": (c.size // c.patch) ** 2,
                       "gmac": m["total"] * bs / 1e9 if m else None,
                       "attention_gmac": m["attention"] * bs / 1e9 if m else None,
                       "fwd_times": t_fwd.get(c.name), "step_times": t_step.get(c.name)}
                for key in ("fwd", "step"):
                    ts = row[f"{key}_times"]
                    row[f"{key}_s"] = statistics.median(ts) if ts else None
                    row[f"{key}_ips"] = bs / row[f"{key}_s"] if ts else None
                if row["gmac"] and row["fwd_s"]:
                    row["fwd_tflops"] = 2 * row["gmac"] / row["fwd_s"] / 1e3
                    row["fwd_ceiling_frac"] = row["fwd_tflops"] * 1e12 / ceiling
                rows.append(row)
                if memory and c.memory:
                    pending_memory.append((row, c, inputs[c.name]))
        report["results"] = rows
    if memory:
        log("memory pass ...")
        cpu_peak = _CpuPeak() if dev.type == "cpu" else None
        if cpu_peak is not None:
            cpu_peak.pin_mmap_threshold()
        for row, c, x in pending_memory:
            for key, make, wanted in (("fwd", _forward_fn, c.forward), ("step", _step_fn, c.step)):
                if not wanted:
                    continue
                fn = make(c, x, dtype)
                fn()  # first call allocates lazily created state (grads, caches)
                peak = cpu_peak.measure(fn) if cpu_peak is not None else _cuda_peak(fn, dev)
                row[f"{key}_peak_mib"] = peak / 2 ** 20 if peak is not None else None
                if key == "step" and c.name in MEMORY_TABLE_CASES:
                    row.update(_step_tensor_memory(c.module, fn, dev, peak))
    for c_row in rows:
        c_row.setdefault("fwd_peak_mib", None)
        c_row.setdefault("step_peak_mib", None)
    report["loadavg_end"] = _loadavg()
    report["results"] = rows
    report["targets"] = evaluate_targets(rows, report["ceiling"], dtype)
    return report
