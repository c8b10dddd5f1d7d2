"""Command line: ``python -m attnlens demo --out DIR`` (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _interpreter_without_gpu() -> None:
    """On a machine without CUDA, run the kernels through Triton's interpreter, so the tour shows
    the kernels' own weights. Only possible before triton is imported."""
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _parser() -> argparse.ArgumentParser:
    from attnlens.tiny.data import TASKS
    from attnlens.tiny.tour import DEFAULT_SENTENCE

    parser = argparse.ArgumentParser(prog="python -m attnlens", description="attnlens command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small transformer and draw its attention (the visual tour)",
        description="Train a small transformer on a synthetic task, capture its attention "
        "through the fused kernels and write the pictures plus index.html.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--task", default="reverse", choices=TASKS, help="synthetic task (default: reverse)")
    demo.add_argument(
        "--sentence",
        default=DEFAULT_SENTENCE,
        help=f"the example; each distinct word becomes a token (default: {DEFAULT_SENTENCE!r})",
    )
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: 1500)")
    demo.add_argument("--d-model", type=int, default=64, help="model width (default: 64)")
    demo.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    demo.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (default: 2)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    demo.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    _interpreter_without_gpu()  # before anything imports triton
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from attnlens.tiny.tour import run_tour

        result = run_tour(
            args.out,
            task=args.task,
            sentence=args.sentence,
            seed=args.seed,
            steps=args.steps,
            d_model=args.d_model,
            nhead=args.heads,
            num_layers=args.layers,
            device=args.device,
            progress=not args.no_progress,
        )
        print(f"input:  {' '.join(result.source)}")
        print(f"output: {' '.join(result.prediction)}")
        if result.val_accuracy is not None:
            print(f"held-out token accuracy: {result.val_accuracy:.1%}")
        print(f"{len(result.pictures)} pictures in {result.total_seconds:.0f} s; open {result.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
