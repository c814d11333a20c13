"""The graded export formats: `preference` pairs (JSONL) and `rl` prompts with their tests (Parquet).

    selfinstruct export --db runs/db.sqlite --run demo --format preference --out data/pairs.jsonl
    selfinstruct export --db runs/db.sqlite --run demo --format rl --out data/rl.parquet --split-val 0.05

Both are built per problem from the stored executions (db/selection.py reads them page by page), not
from the triples table: every executed sample of a final problem is graded by its pass fraction.

`preference` (AceCoder-style pairs, for DPO and reward models): per problem, `chosen` solutions pass at
least `--chosen-min` of the tests (default 1.0: the sandbox's full pass) and `rejected` ones at most
`--rejected-max` (default 0.5: failing at least half), each side deduped by normalized code; the pairs
walk the chosen x rejected grid diagonal by diagonal ((0,0), (0,1), (1,0), (0,2), ...), at most
`--pairs-per-problem` of them. A row: id, prompt / chosen / rejected (the Llama 2 chat text,
"<s>[INST] problem [/INST]" and " answer </s>", as `chat` rows split it), the plain fields problem,
tests, chosen_code, rejected_code, chosen_pass_fraction, rejected_pass_fraction, the solution ids and
sample indexes, samples_drawn / samples_passed, run, problem_id, and the thresholds used.
Pairs whose text holds a Llama 2 control tag are skipped and counted.

`rl` (verl's RL dataset layout, one row per problem with at least one fully passing solution, so the
tests are known to be satisfiable): `data_source` "selfinstruct", `prompt` as chat messages
[{role: user, content: problem}], `ability` "code", `reward_model` {style: "rule", ground_truth: the
tests as a JSON array of assert statements (a string, as verl's reward functions take it)}, and
`extra_info` with the split, index, id, run, problem id, the reference solution (the first passing
sample) and its id, samples drawn / passed, the answer format the prompt expects ([PYTHON] tags), and
the sandbox settings the run's executions used (imports, timeout_s, memory_mb, output_limit_bytes,
image). Written with pyarrow one page at a time; loads with pyarrow and
`datasets.load_dataset("parquet", data_files=...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from db import selection
from db.export import is_validation
from db.models import Problem, Run, Test
from db.records import tests_json
from model.chat import SPECIAL_TAGS, prompt_answer_text
from selfinstruct.errors import UserError

DATA_SOURCE = "selfinstruct"
DEFAULT_PAIRS_PER_PROBLEM = 3


@dataclass(frozen=True, slots=True)
class PreferenceOptions:
    chosen_min: float = 1.0
    rejected_max: float = 0.5
    pairs_per_problem: int = DEFAULT_PAIRS_PER_PROBLEM

    def check(self) -> None:
        selection.check_fraction("--chosen-min", self.chosen_min)
        selection.check_fraction("--rejected-max", self.rejected_max)
        if self.rejected_max >= self.chosen_min:
            raise UserError(f"--rejected-max ({self.rejected_max}) must be below --chosen-min ({self.chosen_min})")
        if self.pairs_per_problem < 1:
            raise UserError(f"--pairs-per-problem must be at least 1, got {self.pairs_per_problem}")


@dataclass(slots=True)
class GradedProblem:
    """A final problem with everything a graded row needs."""

    run: str
    problem_id: int
    text: str
    norm_hash: str
    tests: list[str]
    samples: selection.ProblemSamples
    sandbox: dict[str, Any]


def _sandbox_settings(config: Any) -> dict[str, Any]:
    """What rewarding an answer needs from a run's config: the limits its executions ran under."""
    config = config if isinstance(config, dict) else {}
    sandbox, execution = config.get("sandbox") or {}, config.get("execution") or {}
    return {
        "imports": execution.get("imports", "from typing import *"),
        "timeout_s": sandbox.get("timeout_s"),
        "memory_mb": sandbox.get("memory_mb"),
        "output_limit_bytes": sandbox.get("output_limit_bytes"),
        "image": sandbox.get("image"),
    }


def iter_graded(engine: sa.Engine, runs: Sequence[str], page: int = selection.PAGE_PROBLEMS) -> Iterator[list[GradedProblem]]:
    """Pages of final problems (every parsed solution executed) of `runs` (empty: all), in problem id
    order, all in one read snapshot."""
    from db.engine import read_transaction

    p, t, r = Problem.__table__, Test.__table__, Run.__table__
    with read_transaction(engine, snapshot=True) as conn:
        run_rows = conn.execute(sa.select(r.c.id, r.c.name, r.c.config)).all()
        names = {rid: name for rid, name, _ in run_rows}
        settings = {rid: _sandbox_settings(config) for rid, _, config in run_rows}
        run_ids = [rid for rid, name in names.items() if name in runs] if runs else None
        samples_q = selection._samples_query(run_ids, with_tests=False)
        problems_q = sa.select(p.c.id, p.c.text, p.c.norm_hash, p.c.tests_json).where(
            p.c.id > sa.bindparam("last"), p.c.id <= sa.bindparam("hi"), p.c.solutions_status == "done"
        )
        tests_q = (
            sa.select(t.c.problem_id, t.c.code)
            .where(t.c.problem_id > sa.bindparam("last"), t.c.problem_id <= sa.bindparam("hi"))
            .order_by(t.c.problem_id, t.c.index)
        )
        for last, hi in selection.windows(conn, run_ids, page):
            window = {"last": last, "hi": hi}
            final = [ps for ps in selection.read_window(conn, samples_q, last, hi) if ps.final]
            if not final:
                continue
            info = {pid: (text, h, tj) for pid, text, h, tj in conn.execute(problems_q, window)}
            table_tests: dict[int, list[str]] = defaultdict(list)
            if any(info[ps.problem_id][2] is None for ps in final):
                for pid, code in conn.execute(tests_q, window):
                    table_tests[pid].append(code)
            yield [
                GradedProblem(
                    names[ps.run_id], ps.problem_id, info[ps.problem_id][0], info[ps.problem_id][1],
                    json.loads(info[ps.problem_id][2]) if info[ps.problem_id][2] is not None
                    else table_tests[ps.problem_id],
                    ps, settings[ps.run_id],
                )
                for ps in final
            ]


def _example_id(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def _answer(code: str) -> str:
    return f"[PYTHON]\n{code.strip()}\n[/PYTHON]"


def grid(n_chosen: int, n_rejected: int, k: int) -> list[tuple[int, int]]:
    """The first k cells of the chosen x rejected grid, diagonal by diagonal ((0,0), (0,1), (1,0), ...)."""
    cells = [(i, j) for i in range(n_chosen) for j in range(n_rejected)]
    return sorted(cells, key=lambda ij: (ij[0] + ij[1], ij[0]))[:k]


def preference_pairs(g: GradedProblem, opts: PreferenceOptions) -> list[tuple[selection.Sample, selection.Sample]]:
    """(chosen, rejected) samples of one problem."""
    executed = [s for s in g.samples.samples if s.executed and s.code is not None]
    full = opts.chosen_min >= 1.0
    chosen = selection.dedup([s for s in executed if (s.passed if full else s.at_least(opts.chosen_min))])
    rejected = selection.dedup(
        [s for s in executed if not s.passed and s.tests_passed <= opts.rejected_max * s.tests_total + 1e-9]
    )
    return [(chosen[i], rejected[j]) for i, j in grid(len(chosen), len(rejected), opts.pairs_per_problem)]


def preference_row(g: GradedProblem, c: selection.Sample, r: selection.Sample, opts: PreferenceOptions) -> dict[str, Any] | None:
    """One pair as a row; None when the Llama 2 format cannot hold it (a control tag in the text)."""
    assert c.code is not None and r.code is not None
    if any(tag in text for tag in SPECIAL_TAGS for text in (g.text, c.code, r.code)):
        return None
    prompt, chosen = prompt_answer_text(g.text, _answer(c.code))
    _, rejected = prompt_answer_text(g.text, _answer(r.code))
    from db.export import pass_fraction

    return {
        "id": _example_id(g.run, g.norm_hash, c.code, r.code),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "problem": g.text,
        "tests": g.tests,
        "chosen_code": c.code,
        "rejected_code": r.code,
        "chosen_pass_fraction": pass_fraction(c.tests_passed, c.tests_total),
        "rejected_pass_fraction": pass_fraction(r.tests_passed, r.tests_total),
        "chosen_solution_id": c.solution_id,
        "rejected_solution_id": r.solution_id,
        "chosen_sample_index": c.sample_index,
        "rejected_sample_index": r.sample_index,
        "samples_drawn": g.samples.drawn,
        "samples_passed": g.samples.passed,
        "run": g.run,
        "problem_id": g.problem_id,
        "chosen_min": opts.chosen_min,
        "rejected_max": opts.rejected_max,
    }


def rl_row(g: GradedProblem) -> dict[str, Any] | None:
    """One problem as a verl RL row (without split and index); None without a fully passing sample."""
    reference = next((s for s in g.samples.samples if s.passed), None)
    if reference is None or reference.code is None:
        return None
    example_id = _example_id(g.run, g.norm_hash)
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": g.text}],
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": tests_json(g.tests)},
        "extra_info": {
            "split": "",
            "index": 0,
            "id": example_id,
            "run": g.run,
            "problem_id": g.problem_id,
            "reference_solution": reference.code,
            "reference_solution_id": reference.solution_id,
            "samples_drawn": g.samples.drawn,
            "samples_passed": g.samples.passed,
            "answer_format": "python-tags",
            "sandbox": g.sandbox,
        },
    }


def _rl_schema() -> Any:
    import pyarrow as pa

    sandbox = pa.struct([("imports", pa.string()), ("timeout_s", pa.float64()), ("memory_mb", pa.int64()),
                         ("output_limit_bytes", pa.int64()), ("image", pa.string())])
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([
            ("split", pa.string()), ("index", pa.int64()), ("id", pa.string()), ("run", pa.string()),
            ("problem_id", pa.int64()), ("reference_solution", pa.string()), ("reference_solution_id", pa.int64()),
            ("samples_drawn", pa.int64()), ("samples_passed", pa.int64()), ("answer_format", pa.string()),
            ("sandbox", sandbox),
        ])),
    ])


@dataclass
class GradedStats:
    train: int = 0
    validation: int = 0
    skipped_chat_format: int = 0
    problems: int = 0


def export_preference(engine: sa.Engine, paths: list[Path], tmp: list[Path], runs: Sequence[str],
                      split_val: float, opts: PreferenceOptions) -> GradedStats:
    opts.check()
    stats = GradedStats()
    files = [open(p, "w", encoding="utf-8") for p in tmp]  # noqa: SIM115 - closed below
    try:
        for page in iter_graded(engine, runs):
            lines: list[list[str]] = [[], []]
            for g in page:
                stats.problems += 1
                for c, r in preference_pairs(g, opts):
                    row = preference_row(g, c, r, opts)
                    if row is None:
                        stats.skipped_chat_format += 1
                        continue
                    val = is_validation(row["id"], split_val)
                    lines[val].append(json.dumps(row, ensure_ascii=False) + "\n")
                    if val:
                        stats.validation += 1
                    else:
                        stats.train += 1
            for fh, text in zip(files, lines, strict=False):
                fh.write("".join(text))
    finally:
        for fh in files:
            fh.close()
    del paths
    return stats


def export_rl(engine: sa.Engine, paths: list[Path], tmp: list[Path], runs: Sequence[str], split_val: float) -> GradedStats:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _rl_schema()
    stats = GradedStats()
    writers = [pq.ParquetWriter(str(p), schema) for p in tmp]
    try:
        for page in iter_graded(engine, runs):
            parts: list[list[dict[str, Any]]] = [[], []]
            for g in page:
                stats.problems += 1
                if (row := rl_row(g)) is None:
                    continue
                val = is_validation(row["extra_info"]["id"], split_val)
                row["extra_info"]["split"] = "validation" if val else "train"
                row["extra_info"]["index"] = stats.validation if val else stats.train
                parts[val].append(row)
                if val:
                    stats.validation += 1
                else:
                    stats.train += 1
            for writer, rows in zip(writers, parts, strict=False):
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    finally:
        for writer in writers:
            writer.close()
    del paths
    return stats


def write_graded(engine: sa.Engine, out: Path, fmt: str, runs: Sequence[str], split_val: float,
                 opts: PreferenceOptions, val_path: Path) -> tuple[GradedStats, list[Path]]:
    """Write `fmt` to `out` (and the validation sibling), atomically; returns the counts and the paths."""
    if fmt == "preference":
        opts.check()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + ([val_path] if split_val > 0 else [])
    tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    try:
        if fmt == "preference":
            stats = export_preference(engine, paths, tmp, runs, split_val, opts)
        else:
            stats = export_rl(engine, paths, tmp, runs, split_val)
        for src, dst in zip(tmp, paths, strict=True):
            os.replace(src, dst)
        if split_val == 0 and val_path.exists():
            val_path.unlink()
    finally:
        for src in tmp:
            src.unlink(missing_ok=True)
    return stats, paths
