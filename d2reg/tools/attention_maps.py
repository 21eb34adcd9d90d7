"""Last-block attention of the CLS token and of each register to the patches ("Vision Transformers Need
Registers", Fig. 9; DINO's CLS self-attention maps), per head and head-mean, drawn over the input.
DINOv2(-reg) and DINOv3 checkpoints (the family is read from the file); for DINOv3 the 4 storage
tokens take the registers' place (same files, reg<i> = storage token i).

The model keeps its fused attention; the maps are recomputed in this tool only, from the last
block's own q/k projections (DINOv3: with the block's RoPE on the patch tokens; see
d2reg.analysis.attention).

Writes, per image, DIR/<image>.png (input + head-mean maps of CLS and every register),
DIR/<image>_cls_heads.png and DIR/<image>_reg<i>_heads.png (per head), and DIR/<image>_attention.npz
(cls: (heads, rows, cols), registers: (registers, heads, rows, cols), prefix_mass: (1 + registers,
heads, 1 + registers): attention of each prefix token to CLS and the registers).

  python tools/attention_maps.py img.jpg --weights dinov2_vitl14_reg4_pretrain.pth --output out/attn
"""
import argparse
import os
import sys

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from d2reg.analysis import attention_maps, common_parser, load_images, load_model_from_args, output_dir
from d2reg.analysis.plots import plot_attention, plot_attention_heads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[common_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", type=int, default=-1, help="block whose attention is shown (default: the last)")
    p.add_argument("--no-heads", action="store_true", help="skip the per-head figures (head-mean figure only)")
    return p


def main(argv=None) -> list:
    args = build_parser().parse_args(argv)
    out = output_dir(args, "attention_maps")
    images = load_images(args.inputs, args.resize, args.max_images)
    model = load_model_from_args(args)
    block = args.block % model.depth
    print(f"{len(images)} image(s); model {model.label}; attention of block {block}; output: {out}")
    short = "storage" if model.family == "dinov3" else "reg"
    names = ["CLS"] + [f"{short}{i}" for i in range(model.num_register_tokens)]
    table, results = [], []
    for im in tqdm(images, desc="attention", disable=len(images) < 4, file=sys.stdout):
        maps = attention_maps(model, im, block)
        results.append(maps)
        np.savez(os.path.join(out, f"{im.name}_attention.npz"), cls=maps.cls, registers=maps.registers,
                 prefix_mass=maps.prefix_mass)
        title = f"{im.name}: block {block} attention to the patches ({model.label})"
        plot_attention(im.rgb, maps.cls, maps.registers, model.patch_size, os.path.join(out, f"{im.name}.png"), title,
                       register_name=model.register_name)
        if not args.no_heads:
            for i, heads in enumerate([maps.cls, *maps.registers]):
                suffix = "cls" if i == 0 else f"reg{i - 1}"
                path = os.path.join(out, f"{im.name}_{suffix}_heads.png")
                plot_attention_heads(im.rgb, heads, model.patch_size, path,
                                     f"{im.name}: {names[i]} attention per head, block {block}")
        mass = maps.prefix_mass.mean(1)  # (P, P): head mean
        to_patches = np.concatenate([maps.cls[None], maps.registers]).sum((2, 3)).mean(1)  # (P,)
        for i, name in enumerate(names):
            table.append([im.name, name, to_patches[i], mass[i, 0], mass[i, 1:].sum() if len(names) > 1 else 0.0])
    regs = "storage" if model.family == "dinov3" else "registers"
    print(f"attention mass of each prefix token (head mean): to the patches / to CLS / to the {regs}")
    print(tabulate(table, headers=["image", "token", "patches", "CLS", regs], tablefmt="github",
                   floatfmt=".3f"))
    print(f"wrote {len(images)} x ({'1' if args.no_heads else str(1 + len(names))} PNG + npz) to {out}")
    return results


if __name__ == "__main__":
    main()
