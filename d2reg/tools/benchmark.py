"""Throughput, peak memory and FLOPs of the d2reg backbones (DINOv2 and DINOv3) against bare timm
(vit_*_patch14_reg4_dinov2 / vit_*_patch16_dinov3), patch 14 and transformers; activation checkpointing
and windowed attention; EoMT and Mask R-CNN on the same ViT; the machine's matmul FLOP/s as the ceiling.
Writes a JSON report and prints markdown tables (see d2reg/benchmark/__init__.py for the method).

Examples:
  python tools/benchmark.py                                   # ViT-S, 1024^2, batch 1, every backbone case
  python tools/benchmark.py --sizes 768 1024 1536 --cases d2reg d2reg-win --step-cases d2reg d2reg-win
  python tools/benchmark.py --device cuda --dtype bf16 --batch-sizes 1 4
  python tools/benchmark.py --cases dinov3 dinov3-timm dinov3-win --step-cases   # DINOv3 only, forward
  # EoMT against its backbone and Mask R-CNN on the same ViT at the recipe's 640^2 (forward and training step):
  python tools/benchmark.py --sizes 640 --cases d2reg d2reg-eomt d2reg-maskrcnn --step-cases d2reg-eomt d2reg-maskrcnn
  # training-step memory of full fine-tuning / act. checkpointing / frozen / frozen-bf16 / LoRA (+ pyramid):
  python tools/benchmark.py --arch vit_base --memory-only --step-cases d2reg+sfp d2reg+sfp-ckpt \
      d2reg+sfp-frozen d2reg+sfp-frozen-bf16 d2reg+sfp-lora
"""
import argparse
import sys

import torch

from d2reg.benchmark import ALL_CASES, DEFAULT_CASES, EOMT_CASES, STEP_CASES, format_report, run_benchmark, save_report
from d2reg.benchmark.run import memory_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small",
                   help="vit_small | vit_base | vit_large (both families) | vit_giant2 (DINOv2) | "
                        "vit_small_plus | vit_huge_plus | vit_7b (DINOv3)")
    p.add_argument("--registers", type=int, default=4,
                   help="DINOv2 register tokens (0: original DINOv2); DINOv3 always has 4 storage tokens")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024], help="square input sides (518-1536)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES), choices=ALL_CASES,
                   help="cases whose forward is timed (default: all but EoMT's " + ", ".join(EOMT_CASES) + ")")
    p.add_argument("--step-cases", nargs="*", default=list(STEP_CASES), choices=ALL_CASES,
                   help="cases whose training step (forward+backward) is timed; none: forward only")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--no-flops", action="store_true", help="skip fvcore FLOP counting")
    p.add_argument("--memory-only", action="store_true",
                   help="only the memory pass of the --step-cases (no timing, no FLOPs, no forward cases)")
    p.add_argument("--embed-dim", type=int, default=0, help="override the arch (tiny test models)")
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--num-heads", type=int, default=0)
    p.add_argument("--pretrain-img-size", type=int, default=518)
    p.add_argument("--json", default="output/benchmark.json", help="where the JSON report goes")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available here; nothing measured.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        args.cases, args.no_flops, args.no_memory = [], True, False
    report = run_benchmark(
        arch=args.arch, sizes=args.sizes, batch_sizes=args.batch_sizes, cases=args.cases,
        step_cases=args.step_cases, device=args.device, dtype=args.dtype, warmup=args.warmup,
        repeats=args.repeats, memory=not args.no_memory, flops=not args.no_flops,
        num_register_tokens=args.registers, pretrain_img_size=args.pretrain_img_size,
        arch_overrides=dict(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads),
        timing=not args.memory_only,
    )
    report["command"] = "python tools/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save_report(report, args.json)
    print()
    print(format_report(report))
    table = memory_table(report)
    if table:
        print("\nTraining-step memory:\n" + table)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
