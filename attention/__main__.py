"""Command line: ``python -m attnlens demo --out DIR`` (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _interpreter_without_gpu() -> None:
    """On a machine without CUDA, run the kernels through Triton's interpreter, so the demo shows
    the kernels' own weights. Only possible before triton is imported."""
    import torch
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlens", description="attnlens command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="draw the attention of an example sentence")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--sentence", default="the cat sat on the mat because it was tired",
                      help="the example sentence")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        _interpreter_without_gpu()
        from attnlens.tour import run_demo
        for path in run_demo(args.out, sentence=args.sentence, seed=args.seed):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
