"""Command line: ``python -m attnlens demo --out DIR`` (what ``make demo`` runs), ``python -m
attnlens explore --model DIR --text "..." --out page.html`` (the explorer page of a local Hugging
Face model) and ``python -m attnlens app`` (the Streamlit explorer app)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence


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

    explore = sub.add_parser(
        "explore",
        help="write the interactive attention explorer of a local Hugging Face model for a text",
        description="Run a text through a local Hugging Face model on attnlens's kernels (the "
        "attn_implementation='attnlens' bridge) and write the explorer of every layer and head: one "
        "self-contained HTML file. Only local files are read (HF_HUB_OFFLINE=1).",
    )
    explore.add_argument("--model", required=True, help="a local model folder (config.json, weights, tokenizer)")
    explore.add_argument("--text", required=True, help="the text to look at")
    explore.add_argument("--out", default="attention.html", help="the page to write (default: attention.html)")
    explore.add_argument("--title", default=None, help="the page's title (default: the folder and token count)")
    explore.add_argument("--max-length", type=int, default=512, help="truncate the text to this many tokens")
    explore.add_argument(
        "--precision", default="auto", choices=["auto", "8", "16"], help="bits per stored weight (default: auto)"
    )
    explore.add_argument(
        "--reference",
        action="store_true",
        help="on a CPU, compute the weights with attnlens's plain-PyTorch reference path (same semantics, "
        "much faster) instead of the kernels in Triton's interpreter",
    )

    app = sub.add_parser(
        "app",
        help="start the explorer app (Streamlit): type a sentence, pick a model, explore its attention",
        description="The attnlens explorer app in your browser: a tiny transformer trained on the spot or a "
        "local Hugging Face model, synthetic data, positional encodings and masks. Needs attnlens[app].",
    )
    app.add_argument("--port", type=int, default=8501, help="the port to serve on (default: 8501)")
    app.add_argument(
        "--address", default="localhost", help="the address to serve on (default: localhost, this machine only)"
    )
    app.add_argument("--headless", action="store_true", help="do not open a browser window")
    return parser


def _command(argv: Sequence[str]) -> Optional[str]:
    """The subcommand, read before the parser (which imports attnlens, and so triton) is built."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _explore(args: argparse.Namespace) -> int:
    import attnlens
    from attnlens.app import hf_attention

    precision = args.precision if args.precision == "auto" else int(args.precision)
    try:
        with attnlens.use_backend("reference" if args.reference else "auto"):
            result = hf_attention(args.model, args.text, max_length=args.max_length)
        page = result.explorer(args.title, precision)
        path = page.save(args.out)
    except (ValueError, TypeError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    layers, heads = len(result.attentions), int(result.attentions[0].shape[1])
    print(
        f"wrote {path}: {layers} layers x {heads} heads x {len(result.tokens)} tokens (weights from attnlens's "
        f"{result.backend} path), stored in {page.precision.bits} bits, {os.path.getsize(path) / 1e6:.1f} MB; "
        "open it in a browser (it needs no network)"
    )
    return 0


def _launcher(folder: str) -> str:
    """A one-line script for ``streamlit run``. Streamlit puts the script's folder on sys.path; run
    from the package it would be attention/, whose modules (data.py, model.py, ...) would then
    shadow top-level names, so the script lives in a folder of its own."""
    path = os.path.join(folder, "attnlens_app.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("from attnlens.app import render\n\nrender()\n")
    return path


def _app(args: argparse.Namespace) -> int:
    try:
        import streamlit  # noqa: F401
    except ImportError:
        print("error: the app needs Streamlit: pip install 'attnlens[app]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="attnlens-app-") as folder:
        command: List[str] = [
            sys.executable, "-m", "streamlit", "run", _launcher(folder),
            "--server.port", str(args.port),
            # A set address also keeps Streamlit from looking up this machine's public IP online.
            "--server.address", args.address,
            "--server.headless", "true" if args.headless else "false",
            # Streamlit reports usage statistics over the network unless told not to.
            "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal",
        ]  # fmt: skip
        # Ended by Ctrl+C or a plain kill, subprocess.call stops the server before returning.
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            return subprocess.call(command)
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    # The demo and explore show the kernels' own weights: on a CPU, through Triton's interpreter
    # (set before anything imports triton). The app's process inherits it, and offers the kernels as
    # a choice there (its default on a CPU is the faster reference path).
    if command in ("demo", "app") or (command == "explore" and "--reference" not in argv):
        _interpreter_without_gpu()
    args = _parser().parse_args(argv)
    if args.command == "explore":
        return _explore(args)
    if args.command == "app":
        return _app(args)
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
        if result.explorer:
            print(f"interactive explorer: {result.explorer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
