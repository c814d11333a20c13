"""`--compare A B ...`: the Code Llama paper's Table 8 layout (rows: models; columns: benchmarks, pass@1 in %)
and, for every model after the first, its per-problem wins and losses against the first: a problem is a
win when its pass rate (c/n) is higher, a loss when lower, over the problems both evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.results import read_summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def compare(dirs: list[str | Path]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(header, rows, wins/losses records)."""
    summaries = [read_summary(d) for d in dirs]
    labels = [str(s.get("model") or Path(d).name) for s, d in zip(summaries, dirs, strict=True)]
    benchmarks: list[str] = []
    for s in summaries:
        benchmarks += [b for b in s["benchmarks"] if b not in benchmarks]
    header = ["model", *[f"{b} pass@1" for b in benchmarks]]
    rows = [[label, *[_fmt(s["benchmarks"].get(b, {}).get("pass@1")) for b in benchmarks]]
            for label, s in zip(labels, summaries, strict=True)]
    duels = []
    base = summaries[0]
    for label, s in zip(labels[1:], summaries[1:], strict=True):
        for b in benchmarks:
            mine, theirs = s["benchmarks"].get(b, {}).get("per_problem"), base["benchmarks"].get(b, {}).get("per_problem")
            if not mine or not theirs:
                continue
            common = sorted(set(mine) & set(theirs))
            diffs = [mine[t][1] / mine[t][0] - theirs[t][1] / theirs[t][0] for t in common]
            duels.append({"model": label, "against": labels[0], "benchmark": b, "problems": len(common),
                          "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
                          "ties": sum(d == 0 for d in diffs),
                          "won": [t for t, d in zip(common, diffs) if d > 0][:10],
                          "lost": [t for t, d in zip(common, diffs) if d < 0][:10]})
    return header, rows, duels
