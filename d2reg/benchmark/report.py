"""Targets (ratios between cases against the ceilings) and the markdown / JSON report."""
from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List


# ---------------------------------------------------------------------------------------- targets
def _find(rows, case, size, batch):
    for r in rows:
        if r["case"] == case and r["size"] == size and r["batch"] == batch:
            return r
    return None


def _ratio(a: dict, b: dict, key: str) -> float:
    """Time ratio a / b: the median of the per-round ratios (the two ran next to each other in each
    round, so a load change between rounds cancels), else the ratio of the medians."""
    ta, tb = a.get(f"{key}_times"), b.get(f"{key}_times")
    if ta and tb and len(ta) == len(tb):
        return statistics.median(x / y for x, y in zip(ta, tb))
    return a[f"{key}_s"] / b[f"{key}_s"]


def evaluate_targets(rows: List[dict], ceiling: Dict[str, float], dtype: str = "fp32") -> List[dict]:
    """The issue's targets from the measured rows (every size/batch where the cases exist)."""
    out = []

    def add(name, size, batch, value, goal, ok, detail=""):
        out.append({"target": name, "size": size, "batch": batch, "value": value, "goal": goal, "met": ok,
                    "detail": detail})

    # (backbone case, its comparison cases, prefix of the target names): the same targets per family
    families = (
        ("d2reg", dict(timm="timm", p14="d2reg-p14", ckpt="d2reg-ckpt", win="d2reg-win", sfp="d2reg+sfp"), ""),
        ("dinov3", dict(timm="dinov3-timm", p14=None, ckpt="dinov3-ckpt", win="dinov3-win", sfp="dinov3+sfp"),
         "DINOv3: "),
    )
    for base, other, pre in families:
        for r in rows:
            if r["case"] != base:
                continue
            size, bs = r["size"], r["batch"]
            timm_r, p14 = _find(rows, other["timm"], size, bs), other["p14"] and _find(rows, other["p14"], size, bs)
            ck, win, sfp = (_find(rows, other[n], size, bs) for n in ("ckpt", "win", "sfp"))
            if timm_r and r["fwd_s"] and timm_r["fwd_s"]:
                v = _ratio(r, timm_r, "fwd")
                add(f"{pre}forward time d2reg / bare timm", size, bs, v, "<= 1.05", v <= 1.05)
            if p14 and r["fwd_ips"] and p14["fwd_ips"]:
                v = _ratio(p14, r, "fwd")  # throughput ratio = inverse time ratio
                extra = f"FLOP ratio {p14['gmac'] / r['gmac']:.2f}" if r["gmac"] and p14["gmac"] else ""
                add(f"throughput patch16@{r['input']} / patch14@{p14['input']}", size, bs, v, ">= 1.5", v >= 1.5,
                    extra)
            if r.get("fwd_ceiling_frac") is not None:
                v = r["fwd_ceiling_frac"]
                extra = ""
                if timm_r and timm_r.get("fwd_ceiling_frac") is not None:
                    extra = f"bare timm {timm_r['fwd_ceiling_frac']:.0%}"
                add(f"{pre}forward FLOP/s / {dtype} matmul FLOP/s", size, bs, v, ">= 0.75", v >= 0.75, extra)
            if ck and r.get("step_peak_mib") and ck.get("step_peak_mib") and r["step_s"] and ck["step_s"]:
                m, t = ck["step_peak_mib"] / r["step_peak_mib"], _ratio(ck, r, "step")
                add(f"{pre}act. checkpointing: step memory ratio", size, bs, m, "<= 0.50", m <= 0.5)
                add(f"{pre}act. checkpointing: step time ratio", size, bs, t, "<= 1.4", t <= 1.4)
            if win and r["fwd_s"] and win["fwd_s"]:
                v = _ratio(r, win, "fwd")
                add(f"{pre}window speed-up (forward), global / windowed", size, bs, v, ">= 1.5", v >= 1.5)
            if win and r["step_s"] and win["step_s"]:
                v = _ratio(r, win, "step")
                add(f"{pre}window speed-up (training step)", size, bs, v, "(report)", None)
            if sfp and r["fwd_s"] and sfp["fwd_s"]:
                v = _ratio(sfp, r, "fwd")
                add(f"{pre}pyramid cost: (backbone+SFP) / backbone forward", size, bs, v, "(report)", None)
    for base, pre in (("d2reg", ""), ("dinov3", "DINOv3: ")):
        for r in rows:
            if r["case"] != f"{base}-eomt":
                continue
            size, bs = r["size"], r["batch"]
            bb, rcnn = _find(rows, base, size, bs), _find(rows, f"{base}-maskrcnn", size, bs)
            if bb and r["fwd_s"] and bb["fwd_s"]:
                v = _ratio(r, bb, "fwd")
                add(f"{pre}EoMT forward / backbone forward", size, bs, v, "<= 1.15", v <= 1.15)
            for key, what in (("fwd", "forward"), ("step", "training step")):
                if rcnn and r[f"{key}_s"] and rcnn[f"{key}_s"]:
                    add(f"{pre}EoMT / Mask R-CNN {what} time", size, bs, _ratio(r, rcnn, key), "(report)", None)
            if rcnn and r.get("step_peak_mib") and rcnn.get("step_peak_mib"):
                add(f"{pre}EoMT / Mask R-CNN step peak memory", size, bs, r["step_peak_mib"] / rcnn["step_peak_mib"],
                    "(report)", None)
    hf_rows = [r for r in rows if r["case"] == "hf"]
    for h in hf_rows:
        r = _find(rows, "d2reg", h["size"], h["batch"])
        if r and r["fwd_s"] and h["fwd_s"]:
            add("forward time d2reg / transformers", h["size"], h["batch"], _ratio(r, h, "fwd"), "(report)", None)
    return out


# ---------------------------------------------------------------------------------------- output
def _fmt(v, spec=".2f", scale=1.0):
    return "-" if v is None else format(v * scale, spec)


def onnxruntime_ratios(rows: list) -> list:
    """For each ``<case>-ort`` row with a timed ``<case>`` row of the same input and batch: the forward
    speed of onnxruntime relative to PyTorch eager (> 1: onnxruntime is faster)."""
    timed = {(r["case"], r["input"], r["batch"]): r for r in rows if r.get("fwd_s")}
    out = []
    for (case, size, batch), r in timed.items():
        eager = timed.get((case[: -len("-ort")], size, batch)) if case.endswith("-ort") else None
        if eager is not None:
            out.append(dict(case=case, input=size, batch=batch, speedup=eager["fwd_s"] / r["fwd_s"]))
    return out


def format_report(report: dict) -> str:
    """Markdown tables: machine, results per case, targets."""
    from tabulate import tabulate

    cfg, mach = report["config"], report["machine"]
    lines = [
        f"machine: {mach['cpu']}" + (f", {mach['gpu']}" if "gpu" in mach else "")
        + f"; {mach['threads']} torch threads; torch {mach['torch']}; {cfg['device']} {cfg['dtype']}; "
        f"load average {_fmt(report.get('loadavg_start'))} at start, {_fmt(report.get('loadavg_end'))} at end",
        "matmul ceiling: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in report["ceiling"].items())
        + "".join(f"; sampled among the forwards at {c['size']}/b{c['batch']}: {c['flops'] / 1e12:.3f}"
                  for c in report.get("ceiling_interleaved", [])),
        f"{cfg['arch']} {cfg.get('arch_overrides') or ''}, median of {cfg['repeats']} interleaved runs "
        f"after {cfg['warmup']} warm-up",
        "",
    ]
    headers = ["case", "input", "patch", "batch", "GMAC", "attn GMAC", "fwd img/s", "fwd ms", "fwd TFLOP/s",
               "% ceiling", "step img/s", "step ms", "fwd peak MiB", "step peak MiB"]
    table = [[r["case"], r["input"], r["patch"], r["batch"], _fmt(r["gmac"], ".4g"), _fmt(r["attention_gmac"], ".4g"),
              _fmt(r["fwd_ips"], ".3f"), _fmt(r["fwd_s"], ".0f", 1e3), _fmt(r.get("fwd_tflops"), ".3f"),
              _fmt(r.get("fwd_ceiling_frac"), ".0f", 100), _fmt(r["step_ips"], ".3f"), _fmt(r["step_s"], ".0f", 1e3),
              _fmt(r["fwd_peak_mib"], ".0f"), _fmt(r["step_peak_mib"], ".0f")] for r in report["results"]]
    lines.append(tabulate(table, headers=headers, tablefmt="github"))
    ratios = onnxruntime_ratios(report["results"])
    if ratios:
        lines.append("")
        lines += [f"onnxruntime / PyTorch eager forward, {r['case']} at {r['input']}² batch {r['batch']}: "
                  f"{r['speedup']:.2f}x the images per second" for r in ratios]
    if report.get("kernels"):
        lines.append("")
        kt = [[k["size"], k["batch"], k["tokens"], _fmt(k["sdpa_flops"], ".3f", 1e-12),
               _fmt(k["linear_flops"], ".3f", 1e-12)] for k in report["kernels"]]
        lines.append(tabulate(kt, headers=["size", "batch", "tokens", "SDPA TFLOP/s", "MLP linear TFLOP/s"],
                              tablefmt="github"))
    if report.get("targets"):
        lines.append("")
        tt = [[t["target"], t["size"], t["batch"], _fmt(t["value"], ".3f"), t["goal"],
               {True: "yes", False: "NO", None: ""}[t["met"]], t["detail"]] for t in report["targets"]]
        lines.append(tabulate(tt, headers=["target", "size", "batch", "measured", "goal", "met", "note"],
                              tablefmt="github"))
    return "\n".join(lines)


def save_report(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
