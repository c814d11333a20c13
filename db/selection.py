"""Graded selection: which executed solutions of a problem to keep, decided from the stored executions.

    selfinstruct select --db runs/db.sqlite --run demo --rule threshold --threshold 0.8 [--out kept.jsonl]
    selfinstruct export --db runs/db.sqlite --run demo --rule best --out data/best.jsonl

The pipeline records every solution's per-test outcomes (`executions.tests`) and writes one triple per
problem by the paper's rule (`first`, or `random`) into the `triples` table. The rules here read the
same stored executions instead, so any rule can be applied to a finished run, as often as wanted,
without executing anything again:

    first        the passing solution with the lowest sample index (the Code Llama rule; == triples table)
    random       a passing solution chosen from the seed and the problem id (== the pipeline's `random`)
    threshold    every solution passing at least a fraction F of the tests (deduped by normalized code)
    best         the solution with the highest pass fraction (> 0), ties by sample index
    all_passing  every fully passing solution, deduped by normalized code

"Passing" is the sandbox's verdict (outcome `passed`: the harness ran every test and each passed); the
pass fraction is tests passed / tests of the problem. Deduplication keeps the lowest sample index of
each normalized code (`normalize_code`: the code as `ast.unparse` writes it, so comments, blank lines
and quoting do not count). Only problems whose solutions are all parsed-and-executed (the same
"final" the pipeline's selection waits for) are looked at; a problem still being executed keeps
nothing yet. The rule and its threshold are recorded on every row selected (and on every export row).

Problems are read in keyset pages of problem ids (`windows`), each page one query, so memory stays flat.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa

from selfinstruct.errors import UserError, cli_entry

Rule = Literal["first", "random", "threshold", "best", "all_passing"]
RULES: tuple[str, ...] = get_args(Rule)
DEFAULT_THRESHOLD = 0.8
PAGE_PROBLEMS = 2000
HISTOGRAM_BINS = 10  # [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0), and exactly 1.0 as its own bar


@dataclass(frozen=True, slots=True)
class SelectionSpec:
    """A rule and its parameters: `threshold` is used by the `threshold` rule, `seed` by `random`."""

    rule: str = "first"
    threshold: float | None = None
    seed: int = 0

    @classmethod
    def make(cls, rule: str, threshold: float | None = None, seed: int = 0) -> SelectionSpec:
        """Validated: an unknown rule or a threshold outside [0, 1] is one UserError line."""
        if rule not in RULES:
            raise UserError(f"unknown selection rule {rule!r}: choose one of {', '.join(RULES)}")
        check_fraction("--threshold", threshold)
        if rule == "threshold" and threshold is None:
            threshold = DEFAULT_THRESHOLD
        if rule != "threshold" and threshold is not None:
            raise UserError(f"--threshold applies to the threshold rule only, not to {rule!r}")
        return cls(rule, threshold, seed)

    @property
    def label(self) -> str:
        return f"threshold>={self.threshold:g}" if self.rule == "threshold" else self.rule


def check_fraction(option: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0 and not math.isnan(value)):
        raise UserError(f"{option} must be a fraction in [0, 1], got {value}")


@dataclass(slots=True)
class Sample:
    """One sampled solution of a problem with its execution (outcome None: not executed, or not parsed)."""

    solution_id: int
    sample_index: int
    parse_status: str
    code: str | None
    outcome: str | None
    tests_passed: int
    tests_total: int
    tests: str | None  # the stored per-test results, JSON text

    @property
    def executed(self) -> bool:
        return self.outcome is not None

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    @property
    def fraction(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else 0.0

    def at_least(self, threshold: float) -> bool:
        # tests_passed / tests_total >= threshold, without float trouble at 2/3 and friends
        return self.tests_total > 0 and self.tests_passed >= threshold * self.tests_total - 1e-9

    def test_outcomes(self) -> list[bool]:
        """Per-test pass/fail in test order; tests the run never reached count as failed."""
        results = json.loads(self.tests) if self.tests else []
        out = [bool(r.get("passed")) for r in results]
        return out + [False] * (self.tests_total - len(out))


@dataclass(slots=True)
class ProblemSamples:
    """A problem's samples in sample order, and whether selection may look at it (every parsed one executed)."""

    problem_id: int
    run_id: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return all(s.executed for s in self.samples if s.parse_status == "ok")

    @property
    def drawn(self) -> int:
        return len(self.samples)

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.samples)


def normalize_code(code: str) -> str:
    """The code as `ast.unparse` writes it (comments, blank lines, quoting and spacing do not count);
    code that does not parse: its non-blank lines, right-stripped."""
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return "\n".join(line.rstrip() for line in code.splitlines() if line.strip())


def dedup(samples: Sequence[Sample]) -> list[Sample]:
    """The first sample (by sample index) of each normalized code."""
    seen: set[str] = set()
    out = []
    for s in samples:
        key = normalize_code(s.code or "")
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def choose(spec: SelectionSpec, problem: ProblemSamples) -> list[Sample]:
    """The samples `spec` keeps for a final problem, in sample order (none for a problem not final)."""
    if not problem.final:
        return []
    executed = [s for s in problem.samples if s.executed]
    if spec.rule in ("first", "random"):
        passing = [s for s in executed if s.passed]
        if not passing:
            return []
        if spec.rule == "first":
            return passing[:1]
        # the same draw as db.queries._choose, so `random` here equals the pipeline's random triples
        return [random.Random(f"{spec.seed}:{problem.problem_id}").choice(passing)]
    if spec.rule == "best":
        scored = [s for s in executed if s.tests_passed > 0]
        if not scored:
            return []
        return [min(scored, key=lambda s: (-s.fraction, not s.passed, s.sample_index))]
    if spec.rule == "threshold":
        assert spec.threshold is not None
        return dedup([s for s in executed if s.at_least(spec.threshold)])
    return dedup([s for s in executed if s.passed])  # all_passing


# --- reading the stored executions -----------------------------------------------------------------


def _tables() -> tuple[sa.Table, sa.Table, sa.Table, sa.Table]:
    from db.models import Execution, Problem, Run, Solution

    return Problem.__table__, Solution.__table__, Execution.__table__, Run.__table__  # type: ignore[return-value]


def _problem_filter(p: sa.Table, run_ids: Sequence[int] | None) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = [p.c.solutions_status == "done"]
    if run_ids is not None:
        conds.append(p.c.run_id.in_(list(run_ids)))
    return conds


def windows(conn: sa.Connection, run_ids: Sequence[int] | None, page: int = PAGE_PROBLEMS) -> Iterator[tuple[int, int]]:
    """Problem-id windows (last, hi], each holding the next `page` problems with solutions."""
    p = _tables()[0]
    inner = sa.select(p.c.id).where(p.c.id > sa.bindparam("last"), *_problem_filter(p, run_ids))
    query = sa.select(sa.func.max(inner.order_by(p.c.id).limit(page).subquery().c.id))
    last = 0
    while (hi := conn.scalar(query, {"last": last})) is not None:
        yield last, hi
        last = hi


def _samples_query(run_ids: Sequence[int] | None, with_tests: bool) -> sa.Select:
    p, s, e, _ = _tables()
    cols = [s.c.problem_id, p.c.run_id, s.c.id, s.c.sample_index, s.c.parse_status, s.c.code, e.c.outcome,
            e.c.tests_passed, e.c.tests_total]
    cols.append(sa.cast(e.c.tests, sa.Text) if with_tests else sa.null())
    return (
        sa.select(*cols)
        .select_from(s)
        .join(p, p.c.id == s.c.problem_id)
        .outerjoin(e, e.c.solution_id == s.c.id)
        .where(*_problem_filter(p, run_ids), p.c.id > sa.bindparam("last"), p.c.id <= sa.bindparam("hi"))
        .order_by(s.c.problem_id, s.c.sample_index)
    )


def read_window(conn: sa.Connection, query: sa.Select, last: int, hi: int) -> list[ProblemSamples]:
    """The problems with ids in (last, hi] and their samples, in problem id order."""
    result = conn.execute(query, {"last": last, "hi": hi})
    try:
        rows = result.cursor.fetchall()  # type: ignore[union-attr]
    finally:
        result.close()
    out: list[ProblemSamples] = []
    for pid, rid, sid, index, parse_status, code, outcome, passed, total, tests in rows:
        if not out or out[-1].problem_id != pid:
            out.append(ProblemSamples(pid, rid))
        out[-1].samples.append(Sample(sid, index, parse_status, code, outcome, passed or 0, total or 0, tests))
    return out


def iter_problems(conn: sa.Connection, run_ids: Sequence[int] | None, *, with_tests: bool = False) -> Iterator[ProblemSamples]:
    """Every problem with solutions in `run_ids` (None: all runs), with its samples, page by page."""
    query = _samples_query(run_ids, with_tests)
    for last, hi in windows(conn, run_ids):
        yield from read_window(conn, query, last, hi)


@dataclass(frozen=True, slots=True)
class Kept:
    """One selected (problem, solution): what `selfinstruct select --out` writes per line."""

    run: str
    problem_id: int
    solution_id: int
    sample_index: int
    rule: str
    threshold: float | None
    pass_fraction: float
    tests_passed: int
    tests_total: int
    samples_drawn: int
    samples_passed: int


def select(engine: sa.Engine, run_ids: Sequence[int], spec: SelectionSpec) -> Iterator[Kept]:
    """What `spec` keeps in the runs, problem by problem, read in one snapshot; writes nothing."""
    from db.engine import read_transaction

    runs = _tables()[3]
    with read_transaction(engine, snapshot=True) as conn:
        names = dict(conn.execute(sa.select(runs.c.id, runs.c.name)).all())
        for problem in iter_problems(conn, run_ids):
            for s in choose(spec, problem):
                yield Kept(names[problem.run_id], problem.problem_id, s.solution_id, s.sample_index, spec.rule,
                           spec.threshold, round(s.fraction, 6), s.tests_passed, s.tests_total, problem.drawn,
                           problem.passed)


def require_executions(engine: sa.Engine, run_ids: Sequence[int], names: Sequence[str]) -> None:
    """A run without a single execution cannot be selected from: one UserError line."""
    from db.engine import read_transaction

    p, s, e, _ = _tables()
    with read_transaction(engine) as conn:
        for rid, name in zip(run_ids, names, strict=True):
            found = conn.scalar(
                sa.select(e.c.id).join(s, s.c.id == e.c.solution_id).join(p, p.c.id == s.c.problem_id)
                .where(p.c.run_id == rid).limit(1)
            )
            if found is None:
                raise UserError(f"run {name!r} has no executions yet: nothing to select from "
                                "(run or resume the pipeline's execution stage first)")


# --- the summary: pass fractions and what each rule keeps ------------------------------------------


def histogram_bin(passed: int, total: int) -> int:
    """Bin of a pass fraction: k for [k/10, (k+1)/10), HISTOGRAM_BINS for exactly 1.0 (all passed)."""
    if total and passed >= total:
        return HISTOGRAM_BINS
    return min(HISTOGRAM_BINS - 1, int(HISTOGRAM_BINS * passed / total)) if total else 0


def histogram_labels() -> list[str]:
    step = 1 / HISTOGRAM_BINS
    return [f"{k * step:.1f}-{(k + 1) * step:.1f}" for k in range(HISTOGRAM_BINS)] + ["1.0"]


def summary(engine: sa.Engine, run_id: int, threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> dict[str, Any]:
    """The distribution of pass fractions over the run's executions, and per rule how many problems and
    (problem, solution) triples it would keep: what `selfinstruct db stats` and the run report show."""
    from db.engine import read_transaction

    check_fraction("--threshold", threshold)
    specs = {r: SelectionSpec.make(r, threshold if r == "threshold" else None, seed) for r in RULES}
    hist = [0] * (HISTOGRAM_BINS + 1)
    kept = {spec.label: {"problems": 0, "triples": 0} for spec in specs.values()}
    final_problems = 0
    with read_transaction(engine, snapshot=True) as conn:
        for problem in iter_problems(conn, [run_id]):
            for s in problem.samples:
                if s.executed:
                    hist[histogram_bin(s.tests_passed, s.tests_total)] += 1
            if not problem.final:
                continue
            final_problems += 1
            for spec in specs.values():
                if chosen := choose(spec, problem):
                    kept[spec.label]["problems"] += 1
                    kept[spec.label]["triples"] += len(chosen)
    return {
        "threshold": threshold,
        "problems_final": final_problems,
        "pass_fraction_histogram": dict(zip(histogram_labels(), hist, strict=True)),
        "rules": kept,
    }


def format_summary(s: dict[str, Any]) -> list[str]:
    """Two lines for the stats table: the histogram and the per-rule counts."""
    hist = ", ".join(f"{k} {v}" for k, v in s["pass_fraction_histogram"].items())
    rules = ", ".join(f"{k} {v['triples']} ({v['problems']} problems)" for k, v in s["rules"].items())
    return [f"  pass frac.  executions by tests passed / tests: {hist}",
            f"  rules       of {s['problems_final']} final problems, would keep: {rules}"]


# --- CLI -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from db.engine import env_url

    ap = argparse.ArgumentParser(
        prog="selfinstruct select",
        description="Apply a selection rule to a finished run's stored executions (nothing is executed again): "
        "print what it keeps, per rule, and optionally write the kept (problem, solution) pairs as JSONL.",
    )
    default_db = env_url()
    ap.add_argument("--db", default=default_db, required=default_db is None,
                    help="SQLAlchemy URL or SQLite path (default: $SELFINSTRUCT_DB)")
    ap.add_argument("--run", action="append", required=True, help="the run (repeatable)")
    ap.add_argument("--rule", default="first", help=f"one of {', '.join(RULES)} (default: first)")
    ap.add_argument("--threshold", type=float, default=None,
                    help=f"the threshold rule's minimum pass fraction (default {DEFAULT_THRESHOLD})")
    ap.add_argument("--seed", type=int, default=None, help="the random rule's seed (default: the run's config seed)")
    ap.add_argument("--out", type=Path, help="write one JSON line per kept (problem, solution) here")
    ap.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    return ap


def run_seed(engine: sa.Engine, run_id: int) -> int:
    """The seed in the run's stored config (the one the pipeline's `random` selection used)."""
    from db.engine import read_transaction

    runs = _tables()[3]
    with read_transaction(engine) as conn:
        config = conn.scalar(sa.select(runs.c.config).where(runs.c.id == run_id)) or {}
    return int(config.get("seed", 0)) if isinstance(config, dict) else 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    import os

    from db.engine import make_engine, require_schema
    from db.queries import get_run_id

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    engine = make_engine(args.db, must_exist=True)
    try:
        require_schema(engine)
        run_ids = [get_run_id(engine, name) for name in args.run]
        seed = args.seed if args.seed is not None else run_seed(engine, run_ids[0])
        spec = SelectionSpec.make(args.rule, args.threshold, seed)
        require_executions(engine, run_ids, args.run)
        problems = triples = 0
        seen: set[int] = set()
        fh = None
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
            fh = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            for kept in select(engine, run_ids, spec):
                triples += 1
                if kept.problem_id not in seen:
                    seen.add(kept.problem_id)
                    problems += 1
                if fh is not None:
                    fh.write(json.dumps({k: getattr(kept, k) for k in Kept.__slots__}) + "\n")
            if fh is not None:
                fh.close()
                os.replace(tmp, args.out)
        finally:
            if fh is not None:
                fh.close()
                tmp.unlink(missing_ok=True)
        summaries = {name: summary(engine, rid, spec.threshold or DEFAULT_THRESHOLD, seed)
                     for name, rid in zip(args.run, run_ids, strict=True)}
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"rule": spec.rule, "threshold": spec.threshold, "seed": seed, "problems": problems,
                          "triples": triples, "out": str(args.out) if args.out else None, "runs": summaries}))
        return 0
    where = f"; wrote them to {args.out}" if args.out else ""
    print(f"rule {spec.label} keeps {triples} (problem, solution) pairs of {problems} problems "
          f"in {', '.join(args.run)}{where}; nothing was executed")
    for name, s in summaries.items():
        print(f"run {name}")
        print("\n".join(format_summary(s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
