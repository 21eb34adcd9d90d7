"""First three PCA components of the patch features as RGB (DINOv2's feature visualisation) of a
DINOv2(-reg) or DINOv3 checkpoint (the family is read from the file), one PCA
basis shared by all images (fit on their tokens together), optional foreground thresholding on the
first component (then a second PCA on the foreground tokens; background black).

Features: patch tokens at the output of --block (default the last), before the final LayerNorm
unless --post-norm (DINOv2's own PCA figures use the normed tokens).

Writes DIR/pca.png (a row per image: input, PCA colours[, foreground]), DIR/<image>_pca.png (the
PCA colours alone, one patch per cell, at the input's size) and DIR/pca.npz.

  python tools/pca_features.py imgs/ --weights dinov2_vitb14_reg4_pretrain.pth --fg-threshold 0.6 --output out/pca
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from d2reg.analysis import block_features, common_parser, load_images, load_model_from_args, output_dir, pca_rgb
from d2reg.analysis.plots import plot_pca


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[common_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", type=int, default=-1, help="block whose output is used (default: the last)")
    p.add_argument("--post-norm", action="store_true", help="apply the final LayerNorm to the features")
    p.add_argument("--fg-threshold", type=float, default=None, metavar="T",
                   help="foreground: first component (scaled to [0, 1]) > T; then PCA on the foreground only")
    p.add_argument("--invert-fg", action="store_true", help="foreground is first component < T instead")
    p.add_argument("--max-figure-rows", type=int, default=16, help="images shown in pca.png")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = output_dir(args, "pca_features")
    images = load_images(args.inputs, args.resize, args.max_images)
    model = load_model_from_args(args, final_norm=args.post_norm)
    block = args.block % model.depth
    print(f"{len(images)} image(s); model {model.label}; block {block} "
          f"({'post' if args.post_norm else 'pre'}-final-norm); output: {out}")
    feats = [block_features(model, im, block, args.post_norm)
             for im in tqdm(images, desc="features", disable=len(images) < 4, file=sys.stdout)]
    res = pca_rgb(feats, args.fg_threshold, args.invert_fg)
    p = model.patch_size
    for im, rgb in zip(images, res.rgb):
        big = np.kron((rgb * 255).round().astype(np.uint8), np.ones((p, p, 1), dtype=np.uint8))
        Image.fromarray(big[: im.size[0], : im.size[1]]).save(os.path.join(out, f"{im.name}_pca.png"))
    fg = args.fg_threshold is not None
    items = [(im.name, im.rgb, rgb, mask if fg else None)
             for im, rgb, mask in list(zip(images, res.rgb, res.foreground))[: args.max_figure_rows]]
    plot_pca(items, p, os.path.join(out, "pca.png"), f"PCA of block {block} patch features, shared basis "
             f"({model.label})")
    np.savez(os.path.join(out, "pca.npz"), explained=res.explained,
             **{f"{im.name}_rgb": r for im, r in zip(images, res.rgb)},
             **{f"{im.name}_foreground": m for im, m in zip(images, res.foreground)})
    share = ", ".join(f"{100 * v:.1f}%" for v in res.explained)
    fg_note = f"; foreground {100 * np.mean(np.concatenate([m.ravel() for m in res.foreground])):.1f}% of patches" \
        if fg else ""
    print(f"variance explained by components 1-3: {share}{fg_note}")
    print(f"wrote {out}/pca.png, {len(images)} x <image>_pca.png, pca.npz")
    return res


if __name__ == "__main__":
    main()
