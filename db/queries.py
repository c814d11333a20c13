"""Stage queries: the database as the pipeline's work queue.

Every stage follows the same loop: ask for pending work (`pending_*`), do it outside the database
(LLM calls, sandbox runs), and record the whole batch in ONE transaction (`record_*`). Recording is
idempotent: rows are inserted with ON CONFLICT DO NOTHING against the unique constraints
(LLMCall identity, problem hash, test index, solution sample, one execution per solution, one
triple per problem), and the children of a call are only written by the transaction that inserted
the call. So a process killed at any moment and restarted, or two processes working on the same
run, end with exactly the rows of one uninterrupted run: at worst some LLM work is done twice and
its second result is dropped.

All functions take an Engine and open their own transaction; batches are written as multi-row
INSERT / batched UPDATE statements (db/upsert.py), not through the ORM unit of work, which is what
makes them fast (bench/db.py). Pending work comes back as plain records (db/records.py).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from db import lease
from db.dbapi import execute, fetch, has_fast_path, in_ids
from db.engine import read_transaction, write_transaction
from db.models import Execution, LLMCall, Problem, Run, Solution, Test, Triple
from db.planner_stats import note_bulk_write
from db.records import (
    ExecutionJob,
    LLMCallRecord,
    NewProblem,
    ProblemCallStats,
    ProblemRow,
    ProblemWithTests,
    SelectionRule,
    SolutionsOutcome,
    TestRow,
    TestsOutcome,
    problem_key,
    tests_json,
)
from db.upsert import insert_ignore, insert_ignore_values, update_many
from executor.jobs import Result
from selfinstruct.errors import UserError

runs_t: sa.Table = Run.__table__  # type: ignore[assignment]
calls_t: sa.Table = LLMCall.__table__  # type: ignore[assignment]
problems_t: sa.Table = Problem.__table__  # type: ignore[assignment]
tests_t: sa.Table = Test.__table__  # type: ignore[assignment]
solutions_t: sa.Table = Solution.__table__  # type: ignore[assignment]
executions_t: sa.Table = Execution.__table__  # type: ignore[assignment]
triples_t: sa.Table = Triple.__table__  # type: ignore[assignment]

# Sandbox output is truncated by the sandbox already; this bounds what a misbehaving caller can store.
MAX_STORED_OUTPUT_CHARS = 8192
# Rows per executemany chunk where a query streams (selection); keeps memory flat on big runs.
_CHUNK = 5000


# --- runs ----------------------------------------------------------------------------------------


def start_run(
    engine: Engine,
    name: str,
    config: dict[str, Any],
    fingerprint: str,
    code_version: str,
    *,
    allow_config_change: bool = False,
    driver: str | None = None,
    take_over: bool = False,
    lease_ttl_s: float = lease.LEASE_TTL_S,
) -> int:
    """Create the run `name`, or resume it; returns its id.

    Resuming under a different config fingerprint is refused (UserError) unless `allow_config_change`,
    in which case the stored config and fingerprint are replaced by the new ones. With `driver`, the
    run's lease is taken for it in the same transaction (db/lease.py): refused (RunBusy) while another
    live driver holds it, unless `take_over`.
    """
    with write_transaction(engine) as conn:
        insert_ignore(
            conn,
            runs_t,
            [
                dict(
                    name=name,
                    config=config,
                    config_fingerprint=fingerprint,
                    code_version=code_version,
                    status="running",
                )
            ],
        )
        row = conn.execute(sa.select(runs_t.c.id, runs_t.c.config_fingerprint).where(runs_t.c.name == name)).one()
        if driver is not None:
            lease.claim(conn, row.id, name, driver, ttl_s=lease_ttl_s, take_over=take_over)
        values: dict[str, Any] = dict(
            status="running", code_version=code_version, finished_at=None, updated_at=sa.func.now()
        )
        if row.config_fingerprint != fingerprint:
            if not allow_config_change:
                raise UserError(
                    f"run {name!r} exists with config fingerprint {row.config_fingerprint[:12]}, this config's is "
                    f"{fingerprint[:12]}: resume with the run's original config, pick a new run name, or allow the change"
                )
            values.update(config=config, config_fingerprint=fingerprint)
        conn.execute(sa.update(runs_t).where(runs_t.c.id == row.id).values(**values))
        return int(row.id)


def finish_run(engine: Engine, run_id: int, status: str = "finished", *, driver: str | None = None) -> bool:
    """Mark a run finished or failed (resuming it later sets it back to running). With `driver`, only
    while that driver holds the run's lease, which it gives up; returns whether the status was set."""
    if status not in ("finished", "failed", "running"):
        raise ValueError(f"unknown run status {status!r}")
    with write_transaction(engine) as conn:
        if driver is not None and not lease.release(conn, run_id, driver):
            return False  # another driver took the run over: its status is that driver's to set
        finished_at = None if status == "running" else sa.func.now()
        result = conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.id == run_id)
            .values(status=status, finished_at=finished_at, updated_at=sa.func.now())
        )
        if result.rowcount != 1:
            raise ValueError(f"no run with id {run_id}")
    return True


def run_names(engine: Engine) -> list[str]:
    """All run names, oldest first."""
    with read_transaction(engine) as conn:
        return list(conn.scalars(sa.select(runs_t.c.name).order_by(runs_t.c.id)))


def get_run_id(engine: Engine, name: str) -> int:
    """The id of run `name`; a missing name is a UserError listing the runs that exist."""
    with read_transaction(engine) as conn:
        run_id = conn.scalar(sa.select(runs_t.c.id).where(runs_t.c.name == name))
    if run_id is None:
        names = run_names(engine)
        known = ", ".join(names[-10:]) if names else "none"
        raise UserError(
            f"no run named {name!r} in the database (runs: {known}); `selfinstruct db stats --db URL` lists them"
        )
    return int(run_id)


CALL_COLUMNS = (
    "run_id",
    "stage",
    "item_key",
    "sample_index",
    "model",
    "prompt",
    "completion",
    "params",
    "seed",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "finish_reason",
)


SOLUTION_COLUMNS = ("problem_id", "sample_index", "call_id", "code", "parse_status", "parse_error", "shown_test_id")
EXECUTION_COLUMNS = (
    "solution_id",
    "outcome",
    "tests",
    "tests_passed",
    "tests_total",
    "duration_ms",
    "stdout",
    "stderr",
    "image_digest",
    "runtime",
)


def _call_values(run_id: int, stage: str, call: LLMCallRecord, item_key: str, sample_index: int) -> tuple:
    """An LLMCall row in CALL_COLUMNS order."""
    return (
        run_id,
        stage,
        item_key,
        sample_index,
        call.model,
        call.prompt,
        call.completion,
        call.params,
        call.seed,
        call.prompt_tokens,
        call.completion_tokens,
        call.latency_s,
        call.finish_reason,
    )


def _call_row(run_id: int, stage: str, call: LLMCallRecord) -> dict[str, Any]:
    return dict(zip(CALL_COLUMNS, _call_values(run_id, stage, call, call.item_key, call.sample_index)))


def _check_problems_in_run(conn: Connection, run_id: int, problem_ids: Iterable[int]) -> None:
    ids = set(problem_ids)
    if not ids:
        return
    if has_fast_path(conn):
        ids_sql, ids_param = in_ids(conn, ids)
        found = {pid for (pid,) in fetch(conn, f"SELECT id FROM problems WHERE run_id = ? AND id {ids_sql}",
                                          [run_id, ids_param])}
    else:
        found = set(conn.scalars(sa.select(problems_t.c.id).where(problems_t.c.run_id == run_id,
                                                                  problems_t.c.id.in_(ids))))
    if found != ids:
        raise ValueError(f"problems {sorted(ids - found)[:10]} are not problems of run {run_id}")


# --- problems ------------------------------------------------------------------------------------


def problem_calls_done(engine: Engine, run_id: int) -> set[str]:
    """The item_keys of the problem-writing calls already recorded (skip them on resume)."""
    with read_transaction(engine) as conn:
        return set(
            conn.scalars(sa.select(calls_t.c.item_key).where(calls_t.c.run_id == run_id, calls_t.c.stage == "problems"))
        )


def count_problems(engine: Engine, run_id: int, status: str | None = "accepted") -> int:
    """Problems stored in the run with `status` (None: all of them)."""
    stmt = sa.select(sa.func.count()).select_from(problems_t).where(problems_t.c.run_id == run_id)
    if status is not None:
        stmt = stmt.where(problems_t.c.status == status)
    with read_transaction(engine) as conn:
        return int(conn.scalar(stmt) or 0)


def existing_problem_texts(
    engine: Engine, run_id: int, statuses: Sequence[str] = ("accepted",)
) -> list[tuple[int, str]]:
    """(id, text) of the run's problems with one of `statuses`, in insertion order: what a resumed run
    loads into its near-duplicate index."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            sa.select(problems_t.c.id, problems_t.c.text)
            .where(problems_t.c.run_id == run_id, problems_t.c.status.in_(list(statuses)))
            .order_by(problems_t.c.id)
        )
        return [(int(r.id), r.text) for r in rows]


def record_problem_call(
    engine: Engine, run_id: int, call: LLMCallRecord, problems: Sequence[NewProblem]
) -> ProblemCallStats:
    """Record a problem-writing call and the questions parsed from it, in one transaction.

    Exact duplicates (a norm_hash already in the run, or twice in `problems`) are dropped by the
    unique constraint and counted on the call. Recording a call whose item_key is already recorded
    writes nothing and reports `already_recorded`.
    """
    return record_problem_calls(engine, run_id, [(call, problems)])[0]


def record_problem_calls(
    engine: Engine, run_id: int, items: Sequence[tuple[LLMCallRecord, Sequence[NewProblem]]]
) -> list[ProblemCallStats]:
    """`record_problem_call` for a batch of calls in ONE transaction (one commit for the batch);
    stats in the order of `items`. Within the batch, a question wins over its duplicates in later calls."""
    if not items:
        return []
    for call, _ in items:
        if not call.item_key:
            raise ValueError("a problem-writing call needs an item_key (db.records.problem_call_key)")
        if call.sample_index != 0:
            raise ValueError("problem-writing calls are identified by item_key alone: give each sample its own key")
    with write_transaction(engine) as conn:
        call_rows = [_call_row(run_id, "problems", call) | dict(items_parsed=len(problems)) for call, problems in items]
        fresh = dict(insert_ignore(conn, calls_t, call_rows, returning=[calls_t.c.item_key, calls_t.c.id]))
        problem_rows = []
        for call, problems in items:
            call_id = fresh.get(call.item_key)
            if call_id is None:
                continue
            problem_rows += [
                dict(
                    run_id=run_id,
                    call_id=call_id,
                    text=p.text,
                    norm_hash=p.norm_hash,
                    status=p.status,
                    reason=p.reason,
                    tests_status="pending",
                    solutions_status="pending",
                )
                for p in problems
            ]
        inserted_per_call: dict[int, int] = defaultdict(int)
        for (call_id,) in insert_ignore(conn, problems_t, problem_rows, returning=[problems_t.c.call_id]):
            inserted_per_call[call_id] += 1
        note_bulk_write(conn, len(call_rows) + len(problem_rows))
        update_many(
            conn,
            calls_t,
            "id",
            ("items_inserted", "items_duplicate"),
            [
                (
                    fresh[call.item_key],
                    inserted_per_call[fresh[call.item_key]],
                    len(problems) - inserted_per_call[fresh[call.item_key]],
                )
                for call, problems in items
                if call.item_key in fresh
            ],
        )
        stored = {
            r.item_key: r
            for r in conn.execute(
                sa.select(
                    calls_t.c.item_key,
                    calls_t.c.id,
                    calls_t.c.items_parsed,
                    calls_t.c.items_inserted,
                    calls_t.c.items_duplicate,
                ).where(
                    calls_t.c.run_id == run_id,
                    calls_t.c.stage == "problems",
                    calls_t.c.item_key.in_([call.item_key for call, _ in items]),
                    calls_t.c.sample_index == 0,
                )
            )
        }
    stats = []
    seen: set[str] = set()
    for call, _ in items:
        r = stored[call.item_key]
        new = call.item_key in fresh and call.item_key not in seen
        seen.add(call.item_key)
        stats.append(
            ProblemCallStats(
                call_id=r.id,
                already_recorded=not new,
                parsed=r.items_parsed or 0,
                inserted=r.items_inserted or 0,
                duplicates=r.items_duplicate or 0,
            )
        )
    return stats


# --- tests ---------------------------------------------------------------------------------------


def pending_tests(engine: Engine, run_id: int, limit: int) -> list[ProblemRow]:
    """Up to `limit` accepted problems whose tests are still to be written, oldest first."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            sa.select(problems_t.c.id, problems_t.c.text)
            .where(
                problems_t.c.run_id == run_id, problems_t.c.status == "accepted", problems_t.c.tests_status == "pending"
            )
            .order_by(problems_t.c.id)
            .limit(limit)
        )
        return [ProblemRow.model_construct(id=r.id, text=r.text) for r in rows]


def record_tests(engine: Engine, run_id: int, items: Sequence[TestsOutcome]) -> int:
    """Record the tests calls of a batch of problems (call rows, parsed asserts with the shown one,
    or the failure reason) in one transaction. Returns how many problems this call recorded (items
    already recorded by an earlier attempt are skipped)."""
    if not items:
        return 0
    with write_transaction(engine) as conn:
        _check_problems_in_run(conn, run_id, (it.problem_id for it in items))
        call_rows = [_call_values(run_id, "tests", it.call, problem_key(it.problem_id), 0) for it in items]
        new_calls = dict(
            insert_ignore_values(conn, calls_t, CALL_COLUMNS, call_rows, returning=[calls_t.c.item_key, calls_t.c.id])
        )
        fresh = [it for it in items if problem_key(it.problem_id) in new_calls]
        test_rows = [
            dict(problem_id=it.problem_id, index=i, code=code, shown=(i == it.shown_index))
            for it in fresh
            if it.failure is None
            for i, code in enumerate(it.tests)
        ]
        insert_ignore(conn, tests_t, test_rows)
        note_bulk_write(conn, len(call_rows) + len(test_rows))
        update_many(
            conn,
            problems_t,
            "id",
            ("tests_status", "tests_reason", "tests_call_id", "tests_json"),
            [
                (
                    it.problem_id,
                    "done" if it.failure is None else "failed",
                    it.failure,
                    new_calls[problem_key(it.problem_id)],
                    tests_json(it.tests) if it.failure is None else None,
                )
                for it in fresh
            ],
        )
    return len(fresh)


# --- solutions -----------------------------------------------------------------------------------


def pending_solutions(engine: Engine, run_id: int, limit: int) -> list[ProblemWithTests]:
    """Up to `limit` problems with tests and no solutions yet, each with all its tests and the shown one."""
    with read_transaction(engine) as conn:
        problems = conn.execute(
            sa.select(problems_t.c.id, problems_t.c.text)
            .where(
                problems_t.c.run_id == run_id,
                problems_t.c.status == "accepted",
                problems_t.c.tests_status == "done",
                problems_t.c.solutions_status == "pending",
            )
            .order_by(problems_t.c.id)
            .limit(limit)
        ).all()
        tests_by_problem: dict[int, list[TestRow]] = defaultdict(list)
        if problems:
            test_rows = conn.execute(
                sa.select(tests_t.c.problem_id, tests_t.c.id, tests_t.c.index, tests_t.c.code, tests_t.c.shown)
                .where(tests_t.c.problem_id.in_([p.id for p in problems]))
                .order_by(tests_t.c.problem_id, tests_t.c.index)
            )
            for t in test_rows:
                # rows straight from the database: construct without re-validating (hot path)
                tests_by_problem[t.problem_id].append(
                    TestRow.model_construct(id=t.id, index=t.index, code=t.code, shown=bool(t.shown))
                )
    out = []
    for p in problems:
        tests = tests_by_problem.get(p.id, [])
        shown = next((t for t in tests if t.shown), None)
        if shown is not None:
            out.append(ProblemWithTests.model_construct(id=p.id, text=p.text, tests=tests, shown_test=shown))
    return out


def record_solutions(engine: Engine, run_id: int, items: Sequence[SolutionsOutcome]) -> int:
    """Record, per problem, its n solution calls and n Solution rows (sample_index = position in
    `samples`, with each sample's parse status) in one transaction. Returns the number of problems
    recorded now (those recorded by an earlier attempt are skipped)."""
    if not items:
        return 0
    with write_transaction(engine) as conn:
        _check_problems_in_run(conn, run_id, (it.problem_id for it in items))
        keys = {it.problem_id: problem_key(it.problem_id) for it in items}
        call_rows = [
            _call_values(run_id, "solutions", s.call, keys[it.problem_id], i)
            for it in items
            for i, s in enumerate(it.samples)
        ]
        inserted = insert_ignore_values(
            conn, calls_t, CALL_COLUMNS, call_rows, returning=[calls_t.c.id, calls_t.c.item_key, calls_t.c.sample_index]
        )
        call_ids = {(key, index): call_id for call_id, key, index in inserted}
        solution_rows = []
        fresh_ids: set[int] = set()
        for it in items:
            key = keys[it.problem_id]
            for i, s in enumerate(it.samples):
                call_id = call_ids.get((key, i))
                if call_id is None:
                    continue  # recorded by an earlier attempt
                fresh_ids.add(it.problem_id)
                solution_rows.append(
                    (it.problem_id, i, call_id, s.code, s.parse_status, s.parse_error, it.shown_test_id)
                )
        insert_ignore_values(conn, solutions_t, SOLUTION_COLUMNS, solution_rows)
        note_bulk_write(conn, len(call_rows) + len(solution_rows))
        # Problems without samples (the stage failed for them) carry no call rows: their status
        # update is idempotent by itself.
        status_rows = [
            (
                it.problem_id,
                "failed" if it.failure is not None or not it.samples else "done",
                it.failure if it.failure is not None or it.samples else "no_samples",
            )
            for it in items
            if it.problem_id in fresh_ids or not it.samples
        ]
        update_many(conn, problems_t, "id", ("solutions_status", "solutions_reason"), status_rows)
    return len(status_rows)


# --- executions ----------------------------------------------------------------------------------


def _unexecuted_solutions(run_id: int) -> sa.Select:
    """Parsed solutions of the run without an execution, walked in solution-id order.

    `problem_id + 0` keeps the planner off the per-problem index, so both SQLite and PostgreSQL scan
    solutions by primary key from the caller's cursor and stop at the limit (the run's problem ids
    become one in-memory set per query), instead of visiting every solution of the run and sorting.
    """
    run_problems = sa.select(problems_t.c.id).where(problems_t.c.run_id == run_id)
    return sa.select(solutions_t.c.id, solutions_t.c.problem_id, solutions_t.c.code).where(
        (solutions_t.c.problem_id + 0).in_(run_problems),
        solutions_t.c.parse_status == "ok",
        ~sa.exists().where(executions_t.c.solution_id == solutions_t.c.id),
    )


def pending_executions(engine: Engine, run_id: int, limit: int, *, after_solution_id: int = 0) -> list[ExecutionJob]:
    """Up to `limit` parsed solutions without an execution, by solution id, with all their problem's
    tests (hidden and shown). `after_solution_id` lets a caller that walks the queue in order skip
    the part it has already handed out."""
    with read_transaction(engine) as conn:
        sols = conn.execute(
            _unexecuted_solutions(run_id)
            .where(solutions_t.c.id > after_solution_id)
            .order_by(solutions_t.c.id)
            .limit(limit)
        ).all()
        tests: dict[int, list[str]] = defaultdict(list)
        if sols:
            rows = conn.execute(
                sa.select(tests_t.c.problem_id, tests_t.c.code)
                .where(tests_t.c.problem_id.in_({s.problem_id for s in sols}))
                .order_by(tests_t.c.problem_id, tests_t.c.index)
            )
            for r in rows:
                tests[r.problem_id].append(r.code)
    return [
        ExecutionJob.model_construct(solution_id=s.id, problem_id=s.problem_id, code=s.code, tests=tests[s.problem_id])
        for s in sols
    ]


def _truncate(text: str) -> str:
    if len(text) <= MAX_STORED_OUTPUT_CHARS:
        return text
    return text[:MAX_STORED_OUTPUT_CHARS] + f"\n... [{len(text) - MAX_STORED_OUTPUT_CHARS} characters truncated]"


def record_executions(engine: Engine, items: Sequence[tuple[int, Result]]) -> int:
    """Record sandbox results (solution id, Result) in one transaction; returns how many were new.

    `tests_total` is the number of tests of the problem (a run cut short by a timeout reports fewer
    per-test results than that).
    """
    if not items:
        return 0
    with write_transaction(engine) as conn:
        ids = [sid for sid, _ in items]
        found = _solutions_with_test_counts(conn, ids)
        problem_of = {sid: pid for sid, pid, _ in found}
        totals = {sid: n_tests for sid, _, n_tests in found}
        if missing := set(ids) - totals.keys():
            raise ValueError(f"no solutions with ids {sorted(missing)[:10]}")
        inserted = insert_ignore_values(
            conn, executions_t, EXECUTION_COLUMNS, [_execution_values(sid, res, totals[sid]) for sid, res in items],
            returning=[executions_t.c.solution_id],
        )
        if touched := {problem_of[sid] for (sid,) in inserted}:  # queue these problems for selection
            _mark_for_selection(conn, touched)
        note_bulk_write(conn, len(inserted))
        return len(inserted)


def _execution_values(solution_id: int, res: Result, n_tests: int) -> tuple:
    """An Execution row in EXECUTION_COLUMNS order (the per-test results stay TestResult models: the insert
    serializes them in one call per row, as [{"passed": ..., "error": ...}, ...])."""
    return (
        solution_id,
        res.outcome,
        res.tests,
        res.tests_passed,
        max(n_tests, len(res.tests)),
        res.duration_ms,
        _truncate(res.stdout),
        _truncate(res.stderr),
        res.image_digest,
        res.runtime,
    )


def _solutions_with_test_counts(conn: Connection, ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """(solution id, problem id, number of tests of the problem) for the solutions that exist."""
    if has_fast_path(conn):
        ids_sql, ids_param = in_ids(conn, ids)
        return fetch(
            conn,
            "SELECT s.id, s.problem_id, (SELECT count(*) FROM tests t WHERE t.problem_id = s.problem_id) "
            f"FROM solutions s WHERE s.id {ids_sql}",
            [ids_param],
        )
    counts = (
        sa.select(solutions_t.c.id, solutions_t.c.problem_id, sa.func.count(tests_t.c.id))
        .join(tests_t, tests_t.c.problem_id == solutions_t.c.problem_id, isouter=True)
        .where(solutions_t.c.id.in_(ids))
        .group_by(solutions_t.c.id, solutions_t.c.problem_id)
    )
    return [tuple(r) for r in conn.execute(counts)]


def _mark_for_selection(conn: Connection, problem_ids: Iterable[int]) -> None:
    """Queue problems for `select_triples` (problems.selection_check)."""
    ids = sorted(problem_ids)
    if has_fast_path(conn):
        ids_sql, ids_param = in_ids(conn, ids)
        execute(conn, f"UPDATE problems SET selection_check = ? WHERE id {ids_sql}", [True, ids_param])
    else:
        conn.execute(sa.update(problems_t).where(problems_t.c.id.in_(ids)).values(selection_check=True))


# --- selection -----------------------------------------------------------------------------------


def _choose(rule: SelectionRule, seed: int, problem_id: int, passing: list[tuple[int, int]]) -> int:
    """The selected solution id among (sample_index, solution_id) pairs sorted by sample_index."""
    if rule == "first":
        return passing[0][1]
    return random.Random(f"{seed}:{problem_id}").choice(passing)[1]


def select_triples(
    engine: Engine,
    run_id: int,
    rule: SelectionRule = "first",
    seed: int = 0,
    *,
    problem_ids: Iterable[int] | None = None,
    rescan: bool = False,
) -> int:
    """Give one triple to each problem whose parsed solutions have all been executed and at least one
    of which passed; returns the number of triples added now.

    "first" keeps the passing solution with the lowest sample_index (the Code Llama rule); "random" a
    passing one chosen deterministically from `seed` and the problem id (the StarCoder2-Instruct
    rule). Problems that already have a triple keep it, so reruns add nothing.

    Which problems are looked at: by default those queued by `record_executions` since they were
    last found final (a triple, or every parsed solution executed without a pass), so calling this
    after every execution batch costs the batch, not the run. `problem_ids` looks at exactly those;
    `rescan` at every problem of the run (after deleting triples to select again, say).
    """
    if rule not in ("first", "random"):
        raise ValueError(f"unknown selection rule {rule!r}")
    p, s, e = problems_t, solutions_t, executions_t
    # One grouped pass per page of problems (hash/merge joins whatever the planner's statistics
    # say; correlated NOT EXISTS chains made PostgreSQL pick nested loops over fresh tables).
    page = (
        sa.select(
            s.c.problem_id,
            sa.func.count(e.c.id),
            sa.func.count(),
            sa.func.sum(sa.case((e.c.outcome == "passed", 1), else_=0)),
        )
        .join(p, p.c.id == s.c.problem_id)
        .outerjoin(e, e.c.solution_id == s.c.id)
        .where(
            p.c.run_id == run_id,
            p.c.solutions_status == "done",
            s.c.parse_status == "ok",
            ~sa.exists().where(triples_t.c.problem_id == p.c.id),
        )
        .group_by(s.c.problem_id)
        .order_by(s.c.problem_id)
        .limit(_CHUNK)
    )
    if problem_ids is not None:
        ids = sorted(set(problem_ids))
        if not ids:
            return 0
        page = page.where(s.c.problem_id.in_(ids))
    elif not rescan:
        page = page.where(p.c.selection_check.is_(True))
    added, last_id = 0, 0
    with write_transaction(engine) as conn:
        # Keyset pages of problems: memory stays flat, and the triples written for one page lie
        # behind the next page's cursor.
        while rows := conn.execute(page.where(s.c.problem_id > last_id)).all():
            last_id = rows[-1][0]
            final = [pid for pid, executed, total, _ in rows if executed == total]
            eligible = [pid for pid, executed, total, n_passed in rows if executed == total and n_passed]
            if eligible:
                passing: dict[int, list[tuple[int, int]]] = defaultdict(list)
                for problem_id, sample_index, solution_id in conn.execute(
                    sa.select(s.c.problem_id, s.c.sample_index, s.c.id)
                    .join(e, e.c.solution_id == s.c.id)
                    .where(s.c.problem_id.in_(eligible), e.c.outcome == "passed")
                    .order_by(s.c.problem_id, s.c.sample_index)
                ):
                    passing[problem_id].append((sample_index, solution_id))
                chosen = [
                    dict(
                        run_id=run_id,
                        problem_id=pid,
                        solution_id=_choose(rule, seed, pid, passing[pid]),
                        selection_rule=rule,
                    )
                    for pid in eligible
                ]
                added_now = len(insert_ignore(conn, triples_t, chosen, returning=[triples_t.c.id]))
                added += added_now
                note_bulk_write(conn, added_now)
            if final:  # final either way: selection never needs to look at them again
                conn.execute(sa.update(p).where(p.c.id.in_(final)).values(selection_check=False))
        # queued problems another process gave a triple meanwhile
        conn.execute(
            sa.update(p)
            .where(
                p.c.run_id == run_id, p.c.selection_check.is_(True), sa.exists().where(triples_t.c.problem_id == p.c.id)
            )
            .values(selection_check=False)
        )
    return added


# --- the funnel ----------------------------------------------------------------------------------


def _counts(conn: Connection, stmt: sa.Select) -> dict[str, int]:
    return {str(k): int(v) for k, v in conn.execute(stmt) if k is not None}


def funnel(engine: Engine, run_id: int) -> dict[str, Any]:
    """Counts per stage for one run: what `selfinstruct db stats` and the run report print.

    problems: calls, questions parsed, exact duplicates dropped, accepted / near-duplicate /
    contaminated; tests: done / failed (by reason) / pending; solutions: samples by parse status;
    executions: outcomes and pass rate; triples; tokens and latency per stage.
    """
    p, s, e, c = problems_t, solutions_t, executions_t, calls_t
    run_problems = sa.select(p.c.id).where(p.c.run_id == run_id).scalar_subquery()
    with read_transaction(engine) as conn:
        run = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).one_or_none()
        if run is None:
            raise ValueError(f"no run with id {run_id}")
        calls = conn.execute(
            sa.select(
                c.c.stage,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(c.c.prompt_tokens), 0),
                sa.func.coalesce(sa.func.sum(c.c.completion_tokens), 0),
                sa.func.coalesce(sa.func.sum(c.c.latency_s), 0.0),
                sa.func.coalesce(sa.func.sum(c.c.items_parsed), 0),
                sa.func.coalesce(sa.func.sum(c.c.items_duplicate), 0),
            )
            .where(c.c.run_id == run_id)
            .group_by(c.c.stage)
        ).all()
        by_stage = {row[0]: row for row in calls}
        status = _counts(conn, sa.select(p.c.status, sa.func.count()).where(p.c.run_id == run_id).group_by(p.c.status))
        accepted = sa.and_(p.c.run_id == run_id, p.c.status == "accepted")
        tests_status = _counts(
            conn, sa.select(p.c.tests_status, sa.func.count()).where(accepted).group_by(p.c.tests_status)
        )
        tests_failures = _counts(
            conn,
            sa.select(p.c.tests_reason, sa.func.count())
            .where(accepted, p.c.tests_status == "failed")
            .group_by(p.c.tests_reason),
        )
        n_tests = conn.scalar(
            sa.select(sa.func.count()).select_from(tests_t).where(tests_t.c.problem_id.in_(run_problems))
        )
        sol_status = _counts(
            conn,
            sa.select(p.c.solutions_status, sa.func.count())
            .where(accepted, p.c.tests_status == "done")
            .group_by(p.c.solutions_status),
        )
        parse = _counts(
            conn,
            sa.select(s.c.parse_status, sa.func.count())
            .where(s.c.problem_id.in_(run_problems))
            .group_by(s.c.parse_status),
        )
        outcomes = _counts(
            conn,
            sa.select(e.c.outcome, sa.func.count())
            .join(s, s.c.id == e.c.solution_id)
            .where(s.c.problem_id.in_(run_problems))
            .group_by(e.c.outcome),
        )
        problems_passing = conn.scalar(
            sa.select(sa.func.count(sa.distinct(s.c.problem_id)))
            .join(e, e.c.solution_id == s.c.id)
            .where(s.c.problem_id.in_(run_problems), e.c.outcome == "passed")
        )
        triples = _counts(
            conn,
            sa.select(triples_t.c.selection_rule, sa.func.count())
            .where(triples_t.c.run_id == run_id)
            .group_by(triples_t.c.selection_rule),
        )
    executed = sum(outcomes.values())
    problem_calls = by_stage.get("problems")
    return {
        "run": {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "code_version": run.code_version,
            "driver": run.driver,  # the lease holder (db/lease.py), None when no driver works on it
            "heartbeat_age_s": None if run.heartbeat_at is None else round(lease.holder_age_s(run.heartbeat_at), 1),
        },
        "problems": {
            "calls": int(problem_calls[1]) if problem_calls else 0,
            "parsed": int(problem_calls[5]) if problem_calls else 0,
            "exact_duplicates": int(problem_calls[6]) if problem_calls else 0,
            "stored": sum(status.values()),
            "accepted": status.get("accepted", 0),
            "near_duplicate": status.get("near_duplicate", 0),
            "contaminated": status.get("contaminated", 0),
        },
        "tests": {
            "pending": tests_status.get("pending", 0),
            "done": tests_status.get("done", 0),
            "failed": tests_status.get("failed", 0),
            "failures": tests_failures,
            "tests": int(n_tests or 0),
        },
        "solutions": {
            "problems_pending": sol_status.get("pending", 0),
            "problems_done": sol_status.get("done", 0),
            "problems_failed": sol_status.get("failed", 0),
            "samples": sum(parse.values()),
            "parse": parse,
        },
        "executions": {
            "executed": executed,
            "pending": parse.get("ok", 0) - executed,
            "outcomes": outcomes,
            "pass_rate": outcomes.get("passed", 0) / executed if executed else 0.0,
            "problems_with_pass": int(problems_passing or 0),
        },
        "triples": {"count": sum(triples.values()), "by_rule": triples},
        "tokens": {
            stage: {
                "calls": int(row[1]),
                "prompt_tokens": int(row[2]),
                "completion_tokens": int(row[3]),
                "latency_s": float(row[4]),
            }
            for stage, row in sorted(by_stage.items())
        },
    }
