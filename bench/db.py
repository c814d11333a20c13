"""Benchmark: the stage queries' batched writes vs one ORM add/commit per row, and export rows/s.

    .venv/bin/python bench/db.py                       # 5k problems x 10 samples, SQLite (+ PostgreSQL if
                                                       #   $SELFINSTRUCT_TEST_PG_URL is set); a couple of minutes
    .venv/bin/python bench/db.py --problems 100000     # the issue's size: 100k problems, 1M solutions/executions

A whole synthetic run goes through the real stage queries, batch by batch as the pipeline drives them
(pending_* then record_*, one transaction per batch): problem calls of 50 questions (recorded
--batch/50 calls per transaction), 5 tests per
problem, n=10 solutions (each with its LLM-call row), one execution per solution, selection, then a
JSONL export. The baseline writes a sample of the same rows, one `session.add` + `commit` per row (the
naive ORM way): problems with their problem-writing call rows, solutions each with its LLM-call row
(the stage writes both, so the baseline does too), executions; on the same tuned engine (WAL,
synchronous=NORMAL), and on SQLite also on an engine as `sa.create_engine` leaves it (an fsync per
commit). Ratios are items/s (problems, solutions, executions) of the batched path over the baseline's,
per table. Wall-clock and CPU-time ratios are both reported: the machine this runs on may be shared.
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from db import queries as q  # noqa: E402
from db.engine import init_db, make_engine, session  # noqa: E402
from db.models import Execution, LLMCall, Problem, Solution  # noqa: E402
from db.records import (  # noqa: E402
    LLMCallRecord,
    NewProblem,
    SolutionSample,
    SolutionsOutcome,
    TestsOutcome,
    problem_call_key,
    text_hash,
)
from executor.jobs import Result, TestResult  # noqa: E402

PER_CALL = 50
N_TESTS = 5
PARAMS = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 512, "stop": ["[/PYTHON]"], "n": 10}


def _call(key: str = "", i: int = 0, completion: str = "") -> LLMCallRecord:
    return LLMCallRecord(
        item_key=key,
        sample_index=i,
        model="codellama-7b-instruct",
        prompt="[INST] Problem: ... [/INST]",
        completion=completion,
        params=PARAMS,
        seed=17,
        prompt_tokens=180,
        completion_tokens=90,
        latency_s=1.2,
    )


def _code(pid: int, i: int) -> str:
    return f"def solve(xs):\n    # problem {pid} sample {i}\n    return sorted(set(xs))\n"


class Timer:
    """Accumulates the seconds spent inside the record_* calls (the inserts), apart from the rest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):  # noqa: ANN001, ANN204
        start, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu
        return out


def bulk_run(
    engine: sa.Engine, n_problems: int, n_samples: int, batch: int
) -> tuple[dict[str, float], dict[str, float]]:
    """The batched path: (seconds per stage end to end with row counts, seconds inside record_* per stage)."""
    t: dict[str, float] = {}
    rec = Timer()
    run_id = q.start_run(engine, f"bench-{uuid.uuid4().hex[:6]}", {"bench": True}, "fp", "bench")
    start = time.perf_counter()
    calls_per_batch = max(1, batch // PER_CALL)
    n_calls = n_problems // PER_CALL
    for first in range(0, n_calls, calls_per_batch):
        items = []
        for c in range(first, min(n_calls, first + calls_per_batch)):
            problems = []
            for j in range(PER_CALL):
                text = f"Write a Python function that solves task {c * PER_CALL + j} of the benchmark, given a list of integers."
                problems.append(NewProblem(text=text, norm_hash=text_hash(text)))
            items.append((_call(problem_call_key(c), completion="1. ..."), problems))
        rec("problems", q.record_problem_calls, engine, run_id, items)
    t["problems_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tests = [f"assert solve([{k}, 1, {k}]) == sorted({{{k}, 1}})" for k in range(N_TESTS)]
    while pending := q.pending_tests(engine, run_id, batch):
        rec(
            "tests",
            q.record_tests,
            engine,
            run_id,
            [
                TestsOutcome(problem_id=p.id, call=_call(completion="[TESTS]"), tests=tests, shown_index=p.id % N_TESTS)
                for p in pending
            ],
        )
    t["tests_s"] = time.perf_counter() - start

    start = time.perf_counter()
    while pend := q.pending_solutions(engine, run_id, max(1, batch // n_samples)):
        items = []
        for p in pend:
            samples = [
                SolutionSample(call=_call(i=i, completion="[PYTHON]..."), code=_code(p.id, i), parse_status="ok")
                if i % 7
                else SolutionSample(call=_call(i=i, completion="oops"), code=None, parse_status="no_tags")
                for i in range(n_samples)
            ]
            items.append(SolutionsOutcome(problem_id=p.id, shown_test_id=p.shown_test.id, samples=samples))
        rec("solutions", q.record_solutions, engine, run_id, items)
    t["solutions_s"] = time.perf_counter() - start

    start = time.perf_counter()
    last = 0
    passed = Result(
        id="", outcome="passed", tests=[TestResult(passed=True)] * N_TESTS, duration_ms=3.1, image_digest="sha256:bench"
    )
    failed = Result(
        id="",
        outcome="failed",
        tests=[TestResult(passed=False, error="AssertionError")] * N_TESTS,
        duration_ms=2.9,
        stderr="Traceback ...\nAssertionError",
        image_digest="sha256:bench",
    )
    while jobs := q.pending_executions(engine, run_id, batch, after_solution_id=last):
        rec(
            "executions",
            q.record_executions,
            engine,
            [(j.solution_id, passed if j.solution_id % 3 == 0 else failed) for j in jobs],
        )
        last = jobs[-1].solution_id
    t["executions_s"] = time.perf_counter() - start

    start = time.perf_counter()
    t["triples"] = q.select_triples(engine, run_id)
    t["select_s"] = time.perf_counter() - start
    f = q.funnel(engine, run_id)
    t["problems"] = f["problems"]["accepted"]
    t["solutions"] = f["solutions"]["samples"]
    t["executions"] = f["executions"]["executed"]
    return t, rec


def _orm_call(run_id: int, stage: str, key: str, i: int, completion: str) -> LLMCall:
    c = _call(key, i, completion)
    return LLMCall(run_id=run_id, stage=stage, item_key=key, sample_index=i, model=c.model, prompt=c.prompt,
                   completion=c.completion, params=c.params, seed=c.seed, prompt_tokens=c.prompt_tokens,
                   completion_tokens=c.completion_tokens, latency_s=c.latency_s, finish_reason=c.finish_reason)


def _add_commit(engine: sa.Engine, row: Any) -> Any:
    with session(engine) as s:
        s.add(row)
        s.flush()
        return row.id


def per_row_baseline(engine: sa.Engine, rows: int) -> dict[str, float]:
    """The same rows the stage queries write, one ORM add + commit per row, on the same database:
    problems with one problem-writing call row per 50, solutions each with its LLM-call row (two rows,
    two commits, as the stage writes two rows per sample), executions. Rates are problems, solutions
    and executions per second (wall and CPU time), so they compare one to one with the batched path's."""
    run_id = q.start_run(engine, f"baseline-{uuid.uuid4().hex[:6]}", {}, "fp", "bench")
    out: dict[str, float] = {}
    ids: list[int] = []
    start, cpu = time.perf_counter(), time.process_time()
    call_id = None
    for i in range(rows):
        if i % PER_CALL == 0:
            call_id = _add_commit(engine, _orm_call(run_id, "problems", problem_call_key(i // PER_CALL), 0, "1. ..."))
        text = f"baseline problem {uuid.uuid4().hex}"
        ids.append(_add_commit(engine, Problem(run_id=run_id, call_id=call_id, text=text, norm_hash=text_hash(text),
                                               status="accepted", tests_status="pending", solutions_status="pending")))
    out["problems_rows_s"] = rows / (time.perf_counter() - start)
    out["problems_rows_cpu_s"] = rows / (time.process_time() - cpu)
    sol_ids: list[int] = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(rows):
        pid, index = ids[i // 10], i % 10
        sol_call = _add_commit(engine, _orm_call(run_id, "solutions", f"p{pid}", index, "[PYTHON]..."))
        sol_ids.append(_add_commit(engine, Solution(problem_id=pid, sample_index=index, call_id=sol_call,
                                                    code=_code(i, 0), parse_status="ok")))
    out["solutions_rows_s"] = rows / (time.perf_counter() - start)
    out["solutions_rows_cpu_s"] = rows / (time.process_time() - cpu)
    start, cpu = time.perf_counter(), time.process_time()
    for sid in sol_ids:
        with session(engine) as s:
            s.add(
                Execution(
                    solution_id=sid,
                    outcome="passed",
                    tests=[{"passed": True, "error": None}] * N_TESTS,
                    tests_passed=N_TESTS,
                    tests_total=N_TESTS,
                    duration_ms=3.1,
                    stdout="",
                    stderr="",
                    image_digest="sha256:bench",
                )
            )
    out["executions_rows_s"] = rows / (time.perf_counter() - start)
    out["executions_rows_cpu_s"] = rows / (time.process_time() - cpu)
    return out


def _reference_export(engine: sa.Engine, out: Path, fmt: str) -> int:
    """The export the readable way (the writer before it built JSON text from page rows): a Triplet, a
    row dict and one pydantic-core `to_json` per row, one write per row. The baseline for the export."""
    from pydantic_core import to_json

    from db.export import ExportFilter, chat_row, is_validation, iter_triples, jsonl_row
    from model.chat import ChatFormatError

    rows = 0
    with open(out, "wb") as train, open(out.with_name(out.stem + ".val.jsonl"), "wb") as val:
        for x in iter_triples(engine, ExportFilter()):
            try:
                row = chat_row(x) if fmt == "chat" else jsonl_row(x)
            except ChatFormatError:
                continue
            (val if is_validation(row["id"], 0.05) else train).write(to_json(row) + b"\n")
            rows += 1
    return rows


def _best_rows_s(fn, reps: int) -> float:
    """Rows/s of the fastest of `reps` runs (the machine is shared: the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - start)
    return rows / best


def export_bench(url: str, out_dir: Path, reps: int) -> dict[str, float]:
    """Export every triple as JSONL in a child process (the CLI: wall time and peak RSS), then in process
    per format against the per-row reference writer on the same database: rows/s, best of `reps`."""
    out = out_dir / f"export-{uuid.uuid4().hex[:6]}.jsonl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "db",
            "export",
            "--db",
            url,
            "--format",
            "jsonl",
            "--out",
            str(out),
            "--split-val",
            "0.05",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rows = _count_lines(out) + _count_lines(val_of(out))
    # rows/s of the export itself, without interpreter start-up: the same export in process
    from db.export import ExportFilter, default_workers, export

    engine = make_engine(url)
    res: dict[str, float] = {"rows": rows, "workers": default_workers()}
    for fmt in ("jsonl", "chat"):
        ref_out = out_dir / f"reference-{fmt}.jsonl"
        ref_rate = _best_rows_s(lambda fmt=fmt, ref_out=ref_out: _reference_export(engine, ref_out, fmt), reps)
        for label, workers in (("", None), ("_1_worker", 1)):  # one process per CPU (the default), and one
            fast_out = out_dir / f"inproc-{fmt}{label}.jsonl"

            def fast(fmt: str = fmt, fast_out: Path = fast_out, workers: int | None = workers) -> int:
                return export(engine, fast_out, fmt=fmt, flt=ExportFilter(), split_val=0.05,  # type: ignore[arg-type]
                              workers=workers).rows

            fast_rate = _best_rows_s(fast, reps)
            same = fast_out.read_bytes() == ref_out.read_bytes() and (
                val_of(fast_out).read_bytes() == val_of(ref_out).read_bytes()
            )
            assert same, f"{fmt}: the export differs from the reference rows"
            res[f"{fmt}_rows_s{label}"] = fast_rate
        res[f"{fmt}_reference_rows_s"] = ref_rate
        res[f"{fmt}_speedup"] = res[f"{fmt}_rows_s"] / ref_rate
    res.update(graded_export_bench(engine, out_dir, reps))
    engine.dispose()
    assert res["rows"] == rows, (res, rows, proc.stdout)
    res["cli_wall_s"] = wall
    res["cli_peak_rss_mb"] = max(rss, before) / 1024
    return res


def graded_export_bench(engine: sa.Engine, out_dir: Path, reps: int) -> dict[str, float]:
    """The graded exports (issue 17) on the same database, in the same run as the jsonl export above:
    jsonl rows chosen by a rule from the stored executions (`export --rule`), preference pairs and rl
    Parquet rows. Rows/s, best of `reps`; `*_problems_s` counts the problems read (every final one)."""
    from db.export import ExportFilter, export, val_path
    from db.graded_export import PreferenceOptions, write_graded

    res: dict[str, float] = {}
    for rule, threshold in (("first", None), ("best", None), ("all_passing", None), ("threshold", 0.5)):
        for label, workers in (("", None), ("_1_worker", 1)):
            out = out_dir / f"rule-{rule}{label}.jsonl"
            flt = ExportFilter(rule=rule, threshold=threshold)
            res[f"jsonl_rule_{rule}_rows_s{label}"] = _best_rows_s(
                lambda out=out, flt=flt, workers=workers: export(engine, out, flt=flt, split_val=0.05,
                                                                 workers=workers).rows, reps)
    for fmt, suffix in (("preference", "jsonl"), ("rl", "parquet")):
        out = out_dir / f"graded.{suffix}"
        problems: list[int] = []

        def run(fmt: str = fmt, out: Path = out, problems: list[int] = problems) -> int:
            stats, _ = write_graded(engine, out, fmt, [], 0.05, PreferenceOptions(), val_path(out))
            problems.append(stats.problems)
            return stats.train + stats.validation

        start = time.perf_counter()
        res[f"{fmt}_rows_s"] = _best_rows_s(run, reps)
        res[f"{fmt}_problems_s"] = problems[-1] * reps / (time.perf_counter() - start)
    return res


def val_of(path: Path) -> Path:
    return path.with_name(path.stem + ".val.jsonl")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def bench_backend(name: str, url: str, args: argparse.Namespace, tmp: Path) -> dict:
    engine = make_engine(url)
    init_db(engine)
    bulk, rec = bulk_run(engine, args.problems, args.samples, args.batch)
    engine.dispose()
    if args.export_only:
        return {
            "rows": {k: int(bulk[k]) for k in ("problems", "solutions", "executions", "triples")},
            "export": {
                k: round(v, 2) if isinstance(v, float) else v
                for k, v in export_bench(url, tmp, args.export_reps).items()
            },
        }
    record_s = rec.seconds
    engine = make_engine(url)
    base = per_row_baseline(engine, args.per_row)
    engine.dispose()
    tables = ("problems", "solutions", "executions")
    plain_base = None
    if name == "sqlite":
        # the same per-row loop on SQLite as sa.create_engine leaves it (rollback journal, synchronous
        # FULL: an fsync per commit), i.e. what "plain SQLAlchemy" does without db.engine's tuning
        plain_path = tmp / "plain.db"
        tuned = make_engine(f"sqlite:///{plain_path}")
        init_db(tuned)
        tuned.dispose()
        plain = sa.create_engine(f"sqlite:///{plain_path}")
        plain_base = per_row_baseline(plain, max(1, args.per_row // 4))
        plain.dispose()
    # the inserts: rows/s inside record_* (solutions: each with its LLM-call row, so 2 rows written)
    insert_rates = {k: bulk[k] / record_s[k] for k in tables}
    # the same in CPU seconds of this process: on a shared machine, less disturbed by other load
    # (meaningful for SQLite, which runs in-process; PostgreSQL's own work is in its server)
    insert_cpu_rates = {k: bulk[k] / rec.cpu_seconds[k] for k in tables}
    # the whole stage as the pipeline drives it: pending_* queries, building the records, record_*
    stage_rates = {k: bulk[k] / bulk[f"{k}_s"] for k in tables}
    res = {
        "rows": {k: int(bulk[k]) for k in (*tables, "triples")},
        "stage_seconds": {k: round(v, 2) for k, v in bulk.items() if k.endswith("_s")},
        "record_seconds": {k: round(v, 2) for k, v in record_s.items()},
        "batched_insert_rows_s": {k: round(v) for k, v in insert_rates.items()},
        "stage_rows_s": {k: round(v) for k, v in stage_rates.items()},
        "per_row_orm_rows_s": {k: round(base[f"{k}_rows_s"]) for k in tables},
        "speedup_insert": {k: round(insert_rates[k] / base[f"{k}_rows_s"], 1) for k in tables},
        "speedup_insert_cpu": {k: round(insert_cpu_rates[k] / base[f"{k}_rows_cpu_s"], 1) for k in tables},
        "speedup_stage": {k: round(stage_rates[k] / base[f"{k}_rows_s"], 1) for k in tables},
    }
    if plain_base is not None:
        res["per_row_orm_default_sqlite_rows_s"] = {k: round(plain_base[f"{k}_rows_s"]) for k in tables}
        res["speedup_insert_vs_default_sqlite"] = {
            k: round(insert_rates[k] / plain_base[f"{k}_rows_s"], 1) for k in tables
        }
    if not args.no_export:
        res["export"] = {
            k: round(v, 2) if isinstance(v, float) else v for k, v in export_bench(url, tmp, args.export_reps).items()
        }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--problems", type=int, default=5000, help="problems (multiple of 50); the issue's full size is 100000"
    )
    ap.add_argument("--samples", type=int, default=10, help="solutions per problem")
    ap.add_argument("--batch", type=int, default=1000, help="rows per pending/record batch")
    ap.add_argument("--per-row", type=int, default=1000, help="rows per table for the one-commit-per-row baseline")
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("SELFINSTRUCT_TEST_PG_URL"),
        help="PostgreSQL URL (a fresh schema is made and dropped)",
    )
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--export-reps", type=int, default=3, help="in-process exports per format (the best counts)")
    ap.add_argument("--export-only", action="store_true", help="skip the per-row insert baselines")
    args = ap.parse_args()
    result: dict = {
        "bench": "db",
        "problems": args.problems,
        "samples": args.samples,
        "batch": args.batch,
        "per_row": args.per_row,
    }
    with tempfile.TemporaryDirectory(prefix="bench-db-") as d:
        tmp = Path(d)
        result["sqlite"] = bench_backend("sqlite", f"sqlite:///{tmp / 'bench.db'}", args, tmp)
        if args.pg_url and not args.no_pg:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(args.pg_url)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            try:
                sep = "&" if "?" in args.pg_url else "?"
                result["postgresql"] = bench_backend(
                    "postgresql", f"{args.pg_url}{sep}options=-csearch_path%3D{schema}", args, tmp
                )
            finally:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
                admin.dispose()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
