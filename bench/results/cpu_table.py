"""The CPU path's benchmark results as Markdown tables (for docs/performance.md).

    python bench/results/cpu_table.py bench/results/cpu-*.json

Reads what ``bench/test_cpu_bench.py`` and ``bench/test_cpu_end_to_end_bench.py`` wrote
(``extra_info``: ``ratio`` = attnlens's median over torch's, both timed in turns in one run) and
prints one table per kind: attention by sequence length, the module, end to end. Each cell is the
ratio (below 1: attnlens is faster), then attnlens's median in ms.
"""

from __future__ import annotations

import argparse
import collections
import json
from typing import Dict, List, Tuple

ATTENTION_COLUMNS: List[Tuple[str, str, str]] = [
    ("weights", "fwd", "weights / eager"),
    ("weights-mean", "fwd", "mean / eager+mean(1)"),
    ("weights-causal", "fwd", "causal weights / eager causal"),
    ("weights-mean-causal", "fwd", "causal mean / eager causal+mean(1)"),
    ("weights", "fwdbwd", "fwd+bwd weights / eager"),
    ("weights-mean", "fwdbwd", "fwd+bwd mean / eager"),
    ("weights-causal", "fwdbwd", "fwd+bwd causal weights / eager causal"),
    ("noweights", "fwd", "no weights / F.sdpa"),
    ("noweights-causal", "fwd", "causal / F.sdpa causal"),
    ("noweights", "fwdbwd", "fwd+bwd / F.sdpa"),
    ("noweights-causal", "fwdbwd", "fwd+bwd causal / F.sdpa causal"),
]


def _load(paths) -> List[dict]:
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            results.extend(json.load(fh)["benchmarks"])
    return results


def _cell(info: dict) -> str:
    return f"{info['ratio']:.2f} ({info['median_s'] * 1e3:.3g} ms)"


def attention_table(results: List[dict]) -> str:
    cells: Dict[Tuple[int, str, str], dict] = {}
    for result in results:
        info = result["extra_info"]
        if str(info.get("impl", "")).startswith("attnlens-"):
            cells[(info["seqlen"], info["impl"][len("attnlens-") :], info["op"])] = info
    if not cells:
        return ""
    seqlens = sorted({key[0] for key in cells})
    columns = [c for c in ATTENTION_COLUMNS if any((n, c[0], c[1]) in cells for n in seqlens)]
    lines = ["| N | " + " | ".join(c[2] for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for n in seqlens:
        row = [_cell(cells[(n, name, op)]) if (n, name, op) in cells else "" for name, op, _ in columns]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def module_table(results: List[dict]) -> str:
    cells = collections.defaultdict(dict)
    for result in results:
        info = result["extra_info"]
        if info.get("impl") == "attnlens.MultiHeadAttention":
            label = f"{info['mode']} {'weights' if info['need_weights'] else 'no weights'}"
            label += ", causal" if info["causal"] else ""
            cells[info["seqlen"]][label] = info
    if not cells:
        return ""
    labels = sorted({label for row in cells.values() for label in row}, key=lambda s: (s.split()[0], s))
    lines = ["| N | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for n in sorted(cells):
        lines.append(f"| {n} | " + " | ".join(_cell(cells[n][x]) if x in cells[n] else "" for x in labels) + " |")
    return "\n".join(lines)


def end_to_end_table(results: List[dict]) -> str:
    rows = []
    for result in results:
        info = result["extra_info"]
        if "model" in info and "MultiHeadAttention" not in info.get("impl", ""):
            what = result["name"].replace("test_cpu_", "")
            rows.append(
                f"| {what} | {info['impl']} | {info['baseline']} | {info['ratio']:.2f} | "
                f"{info['median_s'] * 1e3:.4g} | {info['baseline_median_s'] * 1e3:.4g} |"
            )
    if not rows:
        return ""
    head = "| benchmark | attnlens | against | ratio | attnlens ms | torch ms |\n| --- | --- | --- | --- | --- | --- |"
    return head + "\n" + "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    results = _load(args.paths)
    machine = next((r["extra_info"] for r in results if "cpu" in r["extra_info"]), {})
    if machine:
        print(
            f"{machine['cpu']}, {machine['cores']} cores ({machine['capability']}), "
            f"{machine['threads']} torch thread(s); torch {machine['torch']}, triton {machine['triton']}, "
            f"{machine['date']}\n"
        )
    for table in (attention_table(results), module_table(results), end_to_end_table(results)):
        if table:
            print(table + "\n")


if __name__ == "__main__":
    main()
