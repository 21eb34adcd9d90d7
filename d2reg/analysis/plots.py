"""PNG figures for the diagnostic tools (matplotlib's Agg canvas; pyplot and the global backend are
left alone). Patch-grid maps are drawn over the input with one cell per patch; cells of the
bottom/right padding the model adds are cut at the image border."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_attention",
    "plot_attention_heads",
    "plot_neighbour_cosine",
    "plot_norm_by_block",
    "plot_norm_distribution",
    "plot_norm_heatmaps",
    "plot_pca",
]

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _figure(rows: int, cols: int, cell: float = 2.6, **kw):
    fig = Figure(figsize=(max(3.0, cols * cell), max(2.4, rows * cell * 0.8)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: str, dpi: int = 100) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def overlay(ax, rgb: np.ndarray, grid_map: np.ndarray, patch: int, alpha: float = 0.6, cmap: str = "inferno",
            vmin: Optional[float] = None, vmax: Optional[float] = None):
    """Draw ``rgb`` (H, W, 3) and on it ``grid_map`` (rows, cols), one cell per patch."""
    h, w = rgb.shape[:2]
    rows, cols = grid_map.shape
    ax.imshow(rgb, extent=(0, w, h, 0))
    im = ax.imshow(grid_map, extent=(0, cols * patch, rows * patch, 0), alpha=alpha, cmap=cmap,
                   interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _hide_unused(axes, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.axis("off")


# ---------------------------------------------------------------------------------------- norms
def plot_norm_distribution(series: Dict[str, List[np.ndarray]], thresholds: Dict[str, Sequence[float]],
                           path: str, title: str = "") -> str:
    """Histogram of patch-token norms per block (the paper's Fig. 4a), log count axis, a shared
    norm axis; several models overlaid in one panel per block."""
    depth = max(len(v) for v in series.values())
    cols = min(depth, 6)
    rows = math.ceil(depth / cols)
    top = max(float(np.max(b)) for v in series.values() for b in v)
    bins = np.linspace(0.0, top * 1.02 + 1e-6, 60)
    fig, axes = _figure(rows, cols, sharex=True)
    for b in range(depth):
        ax = axes.ravel()[b]
        for color, (label, blocks) in zip(COLORS, series.items()):
            if b < len(blocks):
                ax.hist(blocks[b], bins=bins, color=color, alpha=0.55, label=label, log=True)
                ax.axvline(thresholds[label][b], color=color, ls="--", lw=0.8)
        ax.set_title(f"block {b}", fontsize=9)
        ax.tick_params(labelsize=7)
    _hide_unused(axes, depth)
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(title or "patch-token L2 norm per block (dashed: outlier threshold)", fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("norm", fontsize=8)
    return _save(fig, path)


def plot_norm_by_block(stats: Dict[str, List[dict]], path: str, title: str = "") -> str:
    """min / median / p99 / max patch-token norm against block, one colour per model."""
    fig, axes = _figure(1, 1, cell=5.5)
    ax = axes[0, 0]
    for color, (label, rows) in zip(COLORS, stats.items()):
        x = [r["block"] for r in rows]
        ax.fill_between(x, [r["min"] for r in rows], [r["max"] for r in rows], color=color, alpha=0.15)
        ax.plot(x, [r["median"] for r in rows], color=color, label=f"{label}: median")
        ax.plot(x, [r["p99"] for r in rows], color=color, ls=":", label="p99")
        ax.plot(x, [r["max"] for r in rows], color=color, ls="--", label="max")
        ax.plot(x, [r["threshold"] for r in rows], color="k", lw=0.6, alpha=0.5)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel("patch-token L2 norm")
    ax.legend(fontsize=6)
    ax.set_title(title or "norm range per block (band: min-max; thin black: threshold)", fontsize=9)
    return _save(fig, path)


def plot_norm_heatmaps(rgb: np.ndarray, maps: Dict[str, np.ndarray], blocks: Sequence[int],
                       patch: Union[int, Dict[str, int]], thresholds: Dict[str, Sequence[float]], path: str,
                       title: str = "") -> str:
    """Per-block norm heatmaps over the image: a row per block, a column per model; outliers boxed.
    ``patch``: one patch size, or one per model label (a DINOv2 model at 14 beside a DINOv3 at 16)."""
    fig, axes = _figure(len(blocks), len(maps))
    patches = patch if isinstance(patch, dict) else {label: patch for label in maps}
    for c, (label, norms) in enumerate(maps.items()):
        patch = patches[label]
        for r, b in enumerate(blocks):
            ax = axes[r, c]
            if b >= norms.shape[0]:
                ax.axis("off")
                continue
            im = overlay(ax, rgb, norms[b], patch, vmin=0.0)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            for i, j in np.argwhere(norms[b] > thresholds[label][b]):
                ax.add_patch(_box(j * patch, i * patch, patch))
            ax.set_title(f"{label[:34]}\nblock {b}: max {norms[b].max():.0f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _box(x: float, y: float, size: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), size, size, fill=False, edgecolor="cyan", lw=1.0)


def plot_neighbour_cosine(sims: Dict[str, dict], path: str) -> str:
    """Fig. 5a: neighbour cosine at the patch-embedding output, outlier vs normal tokens, per model."""
    fig, axes = _figure(1, len(sims), cell=4.0)
    bins = np.linspace(-1, 1, 41)
    for ax, (label, s) in zip(axes[0], sims.items()):
        ax.hist(s["normal_values"], bins=bins, alpha=0.6, density=True, label=f"normal ({s['normal']['count']})")
        if s["outlier_values"]:
            ax.hist(s["outlier_values"], bins=bins, alpha=0.6, density=True,
                    label=f"outlier ({s['outlier']['count']})")
        ax.set_title(f"{label[:40]}\noutliers of block {s['block']}", fontsize=8)
        ax.set_xlabel("mean cosine to 4 neighbours (patch embedding, before pos. emb.)", fontsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ attention
def plot_attention(rgb: np.ndarray, cls: np.ndarray, registers: np.ndarray, patch: int, path: str,
                   title: str = "", register_name: str = "register") -> str:
    """The image, then the head-mean attention of CLS and of each register (DINOv3: ``register_name``
    "storage") to the patches."""
    maps = [("CLS", cls.mean(0))] + [(f"{register_name} {i}", r.mean(0)) for i, r in enumerate(registers)]
    fig, axes = _figure(1, 1 + len(maps))
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 0].axis("off")
    for ax, (label, m) in zip(axes[0, 1:], maps):
        overlay(ax, rgb, m, patch, alpha=0.75, cmap="viridis")
        ax.set_title(f"{label} (head mean)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_attention_heads(rgb: np.ndarray, heads: np.ndarray, patch: int, path: str, title: str = "") -> str:
    """One token's attention to the patches, per head (and the head mean first)."""
    maps = [("head mean", heads.mean(0))] + [(f"head {h}", m) for h, m in enumerate(heads)]
    cols = min(len(maps), 5)
    rows = math.ceil(len(maps) / cols)
    fig, axes = _figure(rows, cols)
    for ax, (label, m) in zip(axes.ravel(), maps):
        overlay(ax, rgb, m, patch, alpha=0.75, cmap="viridis")
        ax.set_title(label, fontsize=8)
    _hide_unused(axes, len(maps))
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ PCA
def plot_pca(items: Sequence[tuple], patch: int, path: str, title: str = "") -> str:
    """A row per image: input, PCA colours over it (and the foreground mask when one was used).
    ``items``: (name, rgb image, pca rgb (rows, cols, 3), foreground mask or None)."""
    with_fg = any(fg is not None for *_, fg in items)
    fig, axes = _figure(len(items), 3 if with_fg else 2)
    for r, (name, rgb, pca, fg) in enumerate(items):
        h, w = rgb.shape[:2]
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title(name[:40], fontsize=8)
        rows, cols = pca.shape[:2]
        axes[r, 1].imshow(pca, extent=(0, cols * patch, rows * patch, 0), interpolation="nearest")
        axes[r, 1].set_xlim(0, w)
        axes[r, 1].set_ylim(h, 0)
        axes[r, 1].set_title("PCA 1-3 -> RGB", fontsize=8)
        if with_fg:
            overlay(axes[r, 2], rgb, fg.astype(float), patch, alpha=0.5, cmap="gray", vmin=0, vmax=1)
            axes[r, 2].set_title("foreground (PC1 threshold)", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
