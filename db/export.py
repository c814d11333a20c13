"""`selfinstruct export`: the selected triples as fine-tuning data (JSONL or Llama 2 chat), streamed.

    selfinstruct export --db runs/db.sqlite --format chat --out data/instruct.jsonl --split-val 0.05 --dedup

Files: PATH gets the training rows and, with --split-val > 0, the sibling PATH with ".val" before the
suffix (data/instruct.val.jsonl) gets the validation rows. Both are written to temporary files and
renamed when complete, so a failed export never leaves half a dataset behind; an export without
--split-val removes the .val sibling an earlier export left, which would look current. Every row's `id` is a
hash of (run, problem hash, solution): stable across exports, and the split is a stable hash of the
id, so a row never moves between train and validation when more runs are added.

Rows are read in pages, each a window of the next 2,000 triple ids (an index range, so every page
costs the same however far into the export it is, on SQLite and PostgreSQL alike), in one read
snapshot: memory stays flat however many rows there are. Per page: one joined query for the rows,
one for the problems' tests, one for the problem-stage LLM calls (chat rows need neither). Each page
is written as JSON text built directly from those rows, in one write per file; the row schemas below,
serialized one dict at a time (`jsonl_row` / `chat_row`), are the definition it is tested against byte
for byte. --dedup keeps, for each problem hash, only the earliest selected triple among the runs
exported (done in SQL, so it too needs no memory).

`jsonl` rows: id, problem, tests (every assert), solution, provenance (run, models / sampling
parameters / seeds per stage, shown test, sandbox image digest, tests passed, sample index, ...).
`chat` rows: id, messages (user problem, assistant answer), text (the exact Llama 2 chat text,
"<s>[INST] ... [/INST] ... </s>", from model.chat), prompt and answer (split at [/INST]), run.
The answer is "[PYTHON]\\n{solution}\\n[/PYTHON]", the paper's format (--answer-format plain: the code).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from pydantic_core import to_json

from db.engine import env_url, make_engine, read_transaction, require_schema
from db.models import Execution, LLMCall, Problem, Run, Solution, Test, Triple
from db.records import tests_json
from model.chat import B_INST, BOS_TEXT, E_INST, EOS_TEXT, SPECIAL_TAGS, prompt_answer_text
from selfinstruct.errors import UserError, cli_entry

ExportFormat = Literal["jsonl", "chat"]
AnswerFormat = Literal["python-tags", "plain"]
PAGE_ROWS = 2000


# --- the rows --------------------------------------------------------------------------------------


class StageProvenance(BaseModel):
    """How one stage's LLM call was made (None where the call is unknown)."""

    model: str | None
    params: dict[str, Any] | None
    seed: int | None


class Provenance(BaseModel):
    run: str
    problem_id: int
    solution_id: int
    sample_index: int
    selection_rule: str
    stages: dict[str, StageProvenance]
    shown_test: str | None
    image_digest: str | None
    tests_passed: int
    tests_total: int
    test_outcomes: list[bool]
    pass_fraction: float
    samples_drawn: int
    samples_passed: int
    selection_threshold: float | None


class JsonlRow(BaseModel):
    id: str
    problem: str
    tests: list[str]
    solution: str
    provenance: Provenance


class ChatMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class ChatRow(BaseModel):
    id: str
    messages: list[ChatMessage]
    text: str
    prompt: str
    answer: str
    run: str


def row_id(run: str, norm_hash: str, solution: str) -> str:
    """Stable id of an exported example: the same triple gets the same id in every export."""
    return hashlib.sha256(f"{run}\x00{norm_hash}\x00{solution}".encode()).hexdigest()[:24]


def is_validation(example_id: str, fraction: float) -> bool:
    """Stable split: the id is a sha256 prefix, so its first 32 bits are a uniform number in [0, 1)
    to compare with the validation fraction (growing the fraction only moves rows into validation)."""
    return fraction > 0 and int(example_id[:8], 16) / 2**32 < fraction


def answer_text(solution: str, answer_format: AnswerFormat = "python-tags") -> str:
    """The assistant's answer: the paper's "[PYTHON]\\n...\\n[/PYTHON]" block, or the bare code."""
    code = solution.strip("\n")
    return f"[PYTHON]\n{code}\n[/PYTHON]" if answer_format == "python-tags" else code


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilter:
    runs: Sequence[str] = ()
    min_tests_passed: int = 0
    since: datetime | None = None
    dedup: bool = False
    # a graded selection rule (db/selection.py) instead of the triples table: rows come from the
    # stored executions, chosen at export time
    rule: str | None = None
    threshold: float | None = None
    seed: int = 0


@dataclass(slots=True)
class Triplet:
    """One selected triple with everything an export row needs."""

    run: str
    problem_id: int
    problem: str
    norm_hash: str
    solution_id: int
    solution: str
    sample_index: int
    selection_rule: str
    tests: list[str]
    shown_test: str | None
    image_digest: str | None
    tests_passed: int
    tests_total: int
    stages: dict[str, dict[str, Any]]
    test_outcomes: list[bool]
    samples_drawn: int
    samples_passed: int
    selection_threshold: float | None = None


@functools.lru_cache(maxsize=4096)
def _params(text: str | None) -> dict[str, Any] | None:
    """Sampling parameters decoded once per distinct value (a run has a handful), shared by its rows."""
    return None if text is None else json.loads(text)


def _stage(model: str | None, params: str | None, seed: int | None) -> dict[str, Any]:
    return {"model": model, "params": _params(params), "seed": seed}


def _candidates(f: ExportFilter, t: Any, p: Any, s: Any, e: Any) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = [
        p.c.id == t.c.problem_id,
        s.c.id == t.c.solution_id,
        e.c.solution_id == s.c.id,
        e.c.outcome == "passed",
    ]
    if f.min_tests_passed:
        conds.append(e.c.tests_passed >= f.min_tests_passed)
    return conds + _triple_filters(f, t)


def _triple_filters(f: ExportFilter, t: Any) -> list[sa.ColumnElement[bool]]:
    """The filters on the triples table alone (runs, selection date)."""
    conds: list[sa.ColumnElement[bool]] = []
    if f.runs:
        runs = Run.__table__
        conds.append(t.c.run_id.in_(sa.select(runs.c.id).where(runs.c.name.in_(list(f.runs)))))
    if f.since is not None:
        conds.append(t.c.created_at >= f.since)
    return conds


# Column positions in a page row (the order `_page_query` selects them in).
(
    _TRIPLE_ID,
    _RUN_ID,
    _PROBLEM_ID,
    _PROBLEM,
    _NORM_HASH,
    _SOLUTION_ID,
    _SOLUTION,
    _SAMPLE_INDEX,
    _RULE,
    _DIGEST,
    _PASSED,
    _TOTAL,
    _PCALL_ID,
    _T_MODEL,
    _T_PARAMS,
    _T_SEED,
    _S_MODEL,
    _S_PARAMS,
    _S_SEED,
    _TESTS_JSON,
    _SHOWN_CODE,
    _EXEC_TESTS,
) = range(22)

CallInfo = tuple[str | None, str | None, int | None]  # model, params (JSON text), seed
_NO_CALL: CallInfo = (None, None, None)


@dataclass(slots=True)
class Page:
    """One keyset page of selected triples as raw DB-API rows (columns: the `_*` positions above), with
    what the rows share looked up once per page: the problem-stage LLM calls (a problems call made
    about 50 problems) and run names. `tests` holds the problems' tests read from the `tests` table,
    for the rows whose `problems.tests_json` is missing (or every row, for the reference reader)."""

    rows: list[tuple[Any, ...]]
    run_names: dict[int, str]
    tests: dict[int, list[str]]
    problem_calls: dict[int, CallInfo]
    samples: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # problem: drawn, passed
    threshold: float | None = None  # the graded rule's threshold, recorded on every row


def _window_query(f: ExportFilter, page_rows: int) -> sa.Select:
    """The last id of the next window of `page_rows` triples after `:last` (those of the runs and dates
    asked for): an index range that bounds each page's work whatever the other filters drop."""
    t = Triple.__table__
    window = sa.select(t.c.id).where(t.c.id > sa.bindparam("last"), *_triple_filters(f, t))
    return sa.select(sa.func.max(window.order_by(t.c.id).limit(page_rows).subquery().c.id))


def _page_query(f: ExportFilter, provenance: bool = True) -> sa.Select:
    """The selected triples with ids in (`:last`, `:hi`], in id order: four primary-key/unique lookups and
    the tests and solutions LLM calls per row; runs, shown tests and problem calls come per page
    (`_read_page`). Without `provenance` (chat rows) only the columns up to `_SOLUTION`: no LLM calls."""
    t, p, s, e = (m.__table__ for m in (Triple, Problem, Solution, Execution))
    calls = LLMCall.__table__
    tcall, scall = calls.alias("tcall"), calls.alias("scall")
    shown = Test.__table__.alias("shown")
    where = _candidates(f, t, p, s, e)
    if f.dedup:  # the earliest triple with this problem hash among the exported candidates wins
        t2, p2, s2, e2 = (x.alias(f"{x.name}_2") for x in (t, p, s, e))
        where.append(
            ~sa.exists().where(*_candidates(f, t2, p2, s2, e2), p2.c.norm_hash == p.c.norm_hash, t2.c.id < t.c.id)
        )
    columns = [t.c.id, t.c.run_id, p.c.id, p.c.text, p.c.norm_hash, s.c.id, s.c.code]
    if not provenance:
        query = sa.select(*columns).select_from(t).join(p, p.c.id == t.c.problem_id)
        query = query.join(s, s.c.id == t.c.solution_id).join(e, e.c.solution_id == s.c.id)
    else:
        columns += [
            s.c.sample_index,
            t.c.selection_rule,
            e.c.image_digest,
            e.c.tests_passed,
            e.c.tests_total,
            p.c.call_id,
            tcall.c.model,
            sa.cast(tcall.c.params, sa.Text),  # raw JSON text: decoded once per distinct value
            tcall.c.seed,
            scall.c.model,
            sa.cast(scall.c.params, sa.Text),
            scall.c.seed,
            p.c.tests_json,
            shown.c.code,
            sa.cast(e.c.tests, sa.Text),
        ]
        query = (
            sa.select(*columns)
            .select_from(t)
            .join(p, p.c.id == t.c.problem_id)
            .join(s, s.c.id == t.c.solution_id)
            .join(e, e.c.solution_id == s.c.id)
            .outerjoin(tcall, tcall.c.id == p.c.tests_call_id)
            .outerjoin(scall, scall.c.id == s.c.call_id)
            .outerjoin(shown, shown.c.id == s.c.shown_test_id)
        )
    return query.where(*where, t.c.id > sa.bindparam("last"), t.c.id <= sa.bindparam("hi")).order_by(t.c.id)


def _tests_query(f: ExportFilter) -> sa.Select:
    """Every test of the problems of the triples in (`:last`, `:hi`] (a superset of a page's rows: no
    list of ids to bind), each problem's in index order."""
    t, tests = Triple.__table__, Test.__table__
    return (
        sa.select(tests.c.problem_id, tests.c.code)
        .select_from(t)
        .join(tests, tests.c.problem_id == t.c.problem_id)
        .where(t.c.id > sa.bindparam("last"), t.c.id <= sa.bindparam("hi"), *_triple_filters(f, t))
        .order_by(t.c.id, tests.c.index)
    )


def _samples_query(f: ExportFilter) -> sa.Select:
    """Per problem of the triples in (`:last`, `:hi`]: solutions sampled, and how many passed."""
    t, s, e = Triple.__table__, Solution.__table__, Execution.__table__
    return (
        sa.select(t.c.problem_id, sa.func.count(s.c.id), sa.func.sum(sa.case((e.c.outcome == "passed", 1), else_=0)))
        .select_from(t)
        .join(s, s.c.problem_id == t.c.problem_id)
        .outerjoin(e, e.c.solution_id == s.c.id)
        .where(t.c.id > sa.bindparam("last"), t.c.id <= sa.bindparam("hi"), *_triple_filters(f, t))
        .group_by(t.c.problem_id)
    )


def _fetch(conn: sa.Connection, query: sa.Select, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A query's rows as DB-API tuples: SQLAlchemy's per-row result processing cost about as much as
    SQLite's own work here, and these columns (ints and text) need none."""
    result = conn.execute(query, params)
    try:
        return result.cursor.fetchall()  # type: ignore[union-attr]
    finally:
        result.close()


def _read_page(
    conn: sa.Connection, query: sa.Select, tests_query: sa.Select | None, last: int, hi: int,
    run_names: dict[int, str], all_tests: bool = False, samples_query: sa.Select | None = None,
    params: dict[str, Any] | None = None,
) -> Page | None:
    """The page of triple ids (`last`, `hi`]; None when no triple there passes the filters. Without
    `tests_query` (chat rows) the page has no tests and no calls. The `tests` table is read for the
    rows without `problems.tests_json` (a problem whose tests were never stored that way), or for every
    row with `all_tests` (the reference reader, so that the test suite compares the two)."""
    window = {"last": last, "hi": hi}
    if not (rows := _fetch(conn, query, window | (params or {}))):
        return None
    if tests_query is None:
        return Page(rows, run_names, {}, {})
    tests: dict[int, list[str]] = defaultdict(list)
    if all_tests or any(row[_TESTS_JSON] is None for row in rows):
        for pid, code in _fetch(conn, tests_query, window):
            tests[pid].append(code)
    call_ids = sorted({row[_PCALL_ID] for row in rows} - {None})
    problem_calls: dict[int, CallInfo] = {}
    if call_ids:
        calls = LLMCall.__table__
        for cid, *info in conn.execute(
            sa.select(calls.c.id, calls.c.model, sa.cast(calls.c.params, sa.Text), calls.c.seed).where(
                calls.c.id.in_(call_ids)
            )
        ):
            problem_calls[cid] = tuple(info)  # type: ignore[assignment]
    samples = {}
    if samples_query is not None:
        samples = {pid: (int(drawn), int(passed or 0)) for pid, drawn, passed in _fetch(conn, samples_query, window)}
    return Page(rows, run_names, tests, problem_calls, samples)


@contextlib.contextmanager
def _snapshot(engine: sa.Engine, imported: str | None = None) -> Iterator[sa.Connection]:
    """One read transaction for a whole export: one snapshot of the database (REPEATABLE READ on
    PostgreSQL, a WAL read transaction on SQLite). `imported` (PostgreSQL) joins the snapshot another
    process exported with pg_export_snapshot(), so parallel workers see exactly the same data."""
    with read_transaction(engine, snapshot=True) as conn:
        if conn.dialect.name == "postgresql":
            if imported is not None:
                conn.exec_driver_sql("SET TRANSACTION SNAPSHOT " + _sql_string(imported))
            # A page is a few thousand primary-key lookups. Left to itself the planner hash-joins each
            # page against whole tables (measured: a full scan of solutions per page, quadratic in the
            # export); nested loops over the window's index range are what this query is.
            for setting in ("enable_hashjoin", "enable_mergejoin"):
                conn.exec_driver_sql(f"SET LOCAL {setting} = off")
            conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
        yield conn


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"  # a snapshot id is hex digits and dashes; quoted all the same


def _run_names(conn: sa.Connection) -> dict[int, str]:
    runs = Run.__table__
    return {rid: name for rid, name in conn.execute(sa.select(runs.c.id, runs.c.name))}


def _windows(conn: sa.Connection, f: ExportFilter, page_rows: int) -> Iterator[tuple[int, int]]:
    """The pages as id windows (last, hi]: each holds the next `page_rows` triples of the runs and dates
    asked for (an index range that bounds each page's work whatever the other filters drop)."""
    window, last = _window_query(f, page_rows), 0
    while (hi := conn.scalar(window, {"last": last})) is not None:
        yield last, hi
        last = hi


class _PageReader:
    """Reads pages of one export on one connection (the queries are built once)."""

    def __init__(self, conn: sa.Connection, f: ExportFilter, provenance: bool, all_tests: bool = False):
        self.f = f
        self.conn, self.query = conn, _page_query(f, provenance)
        self.tests_query = _tests_query(f) if provenance else None
        self.samples_query = _samples_query(f) if provenance else None
        self.run_names, self.all_tests = _run_names(conn), all_tests

    def read(self, last: int, hi: int) -> Page | None:
        return _read_page(self.conn, self.query, self.tests_query, last, hi, self.run_names, self.all_tests,
                          self.samples_query)

    def windows(self, page_rows: int) -> Iterator[tuple[int, int]]:
        return _windows(self.conn, self.f, page_rows)


# --- graded selection: rows chosen from the stored executions at export time -----------------------

RULE_PAGE_PROBLEMS = 1000  # problems per page of a graded export (at most ten ids each are bound)


def _rule_rows_query(f: ExportFilter, provenance: bool) -> sa.Select:
    """`_page_query`'s columns for the solutions `:ids` (chosen by a rule) instead of the triples in a
    window: the solution id stands in for the triple id, the rule's name for the triple's rule."""
    p, s, e = (m.__table__ for m in (Problem, Solution, Execution))
    calls = LLMCall.__table__
    tcall, scall = calls.alias("tcall"), calls.alias("scall")
    shown = Test.__table__.alias("shown")
    columns = [s.c.id, p.c.run_id, p.c.id, p.c.text, p.c.norm_hash, s.c.id, s.c.code]
    query = sa.select(*columns).select_from(s).join(p, p.c.id == s.c.problem_id).join(e, e.c.solution_id == s.c.id)
    if provenance:
        query = query.add_columns(
            s.c.sample_index, sa.literal(f.rule, sa.String), e.c.image_digest, e.c.tests_passed, e.c.tests_total,
            p.c.call_id, tcall.c.model, sa.cast(tcall.c.params, sa.Text), tcall.c.seed, scall.c.model,
            sa.cast(scall.c.params, sa.Text), scall.c.seed, p.c.tests_json, shown.c.code, sa.cast(e.c.tests, sa.Text),
        )
        query = (
            query.outerjoin(tcall, tcall.c.id == p.c.tests_call_id)
            .outerjoin(scall, scall.c.id == s.c.call_id)
            .outerjoin(shown, shown.c.id == s.c.shown_test_id)
        )
    where = [s.c.id.in_(sa.bindparam("ids", expanding=True))]
    if f.min_tests_passed:
        where.append(e.c.tests_passed >= f.min_tests_passed)
    return query.where(*where).order_by(p.c.id, s.c.sample_index)


def _rule_tests_query() -> sa.Select:
    """Every test of the problems with ids in (`:last`, `:hi`], each problem's in index order."""
    tests = Test.__table__
    return (
        sa.select(tests.c.problem_id, tests.c.code)
        .where(tests.c.problem_id > sa.bindparam("last"), tests.c.problem_id <= sa.bindparam("hi"))
        .order_by(tests.c.problem_id, tests.c.index)
    )


class _RuleReader:
    """Reads the pages of a graded export: windows of problem ids; per window, the samples of its final
    problems, the rule's choice among them (db/selection.py), and the chosen rows. With `dedup`, a
    problem hash already exported by an earlier problem (lower id) is dropped: pages must then be read
    in order, by one reader."""

    def __init__(self, conn: sa.Connection, f: ExportFilter, provenance: bool, all_tests: bool = False):
        from db import selection

        self.conn, self.f, self.provenance, self.all_tests = conn, f, provenance, all_tests
        self.spec = selection.SelectionSpec.make(f.rule or "first", f.threshold, f.seed)
        self.run_names = _run_names(conn)
        self.run_ids = [rid for rid, name in self.run_names.items() if name in f.runs] if f.runs else None
        self.samples_query = selection._samples_query(self.run_ids, with_tests=False)
        self.query = _rule_rows_query(f, provenance)
        self.tests_query = _rule_tests_query() if provenance else None
        self.owner: dict[str, int] | None = {} if f.dedup else None  # problem hash -> first problem id

    def windows(self, page_rows: int) -> Iterator[tuple[int, int]]:
        from db import selection

        return selection.windows(self.conn, self.run_ids, min(page_rows, RULE_PAGE_PROBLEMS))

    def read(self, last: int, hi: int) -> Page | None:
        from db import selection

        samples: dict[int, tuple[int, int]] = {}
        ids: list[int] = []
        for problem in selection.read_window(self.conn, self.samples_query, last, hi):
            if kept := selection.choose(self.spec, problem):
                samples[problem.problem_id] = (problem.drawn, problem.passed)
                ids += [k.solution_id for k in kept]
        if not ids:
            return None
        page = _read_page(self.conn, self.query, self.tests_query, last, hi, self.run_names, self.all_tests,
                          params={"ids": ids})
        if page is None:
            return None
        if self.owner is not None:
            owner = self.owner
            page.rows = [r for r in page.rows if owner.setdefault(r[_NORM_HASH], r[_PROBLEM_ID]) == r[_PROBLEM_ID]]
        page.samples, page.threshold = samples, self.spec.threshold
        return page if page.rows else None


def make_reader(conn: sa.Connection, f: ExportFilter, provenance: bool, all_tests: bool = False) -> Any:
    """The triples-table reader, or the graded-selection reader when the filter names a rule."""
    if f.rule is not None:
        return _RuleReader(conn, f, provenance, all_tests)
    return _PageReader(conn, f, provenance, all_tests)


def iter_pages(
    engine: sa.Engine, f: ExportFilter, page_rows: int = PAGE_ROWS, *, provenance: bool = True,
    all_tests: bool = False,
) -> Iterator[Page]:
    """Stream the selected triples that pass `f`, in triple id order, one keyset page at a time, all in
    one read snapshot. Memory holds one page. Without `provenance` the rows stop at `_SOLUTION` and the
    page has no tests or calls (what chat rows need); `all_tests` reads every row's tests from the
    `tests` table (see `_read_page`)."""
    with _snapshot(engine) as conn:
        reader = make_reader(conn, f, provenance, all_tests)
        for last, hi in reader.windows(page_rows):
            if page := reader.read(last, hi):
                yield page


def iter_triples(engine: sa.Engine, f: ExportFilter, page_rows: int = PAGE_ROWS) -> Iterator[Triplet]:
    """The selected triples that pass `f` as `Triplet` records (the readable form of a page row: what
    `jsonl_row` / `chat_row` take, and the reference the export's fast writers are tested against)."""
    for page in iter_pages(engine, f, page_rows, all_tests=True):
        for row in page.rows:
            pcall = _NO_CALL if row[_PCALL_ID] is None else page.problem_calls.get(row[_PCALL_ID], _NO_CALL)
            yield Triplet(
                run=page.run_names[row[_RUN_ID]],
                problem_id=row[_PROBLEM_ID],
                problem=row[_PROBLEM],
                norm_hash=row[_NORM_HASH],
                solution_id=row[_SOLUTION_ID],
                solution=row[_SOLUTION],
                sample_index=row[_SAMPLE_INDEX],
                selection_rule=row[_RULE],
                tests=page.tests[row[_PROBLEM_ID]],
                shown_test=row[_SHOWN_CODE],
                image_digest=row[_DIGEST],
                tests_passed=row[_PASSED],
                tests_total=row[_TOTAL],
                stages={
                    "problems": _stage(*pcall),
                    "tests": _stage(row[_T_MODEL], row[_T_PARAMS], row[_T_SEED]),
                    "solutions": _stage(row[_S_MODEL], row[_S_PARAMS], row[_S_SEED]),
                },
                test_outcomes=test_outcomes(row[_EXEC_TESTS], row[_TOTAL]),
                samples_drawn=page.samples[row[_PROBLEM_ID]][0],
                samples_passed=page.samples[row[_PROBLEM_ID]][1],
                selection_threshold=page.threshold,
            )


def test_outcomes(tests: str | None, total: int) -> list[bool]:
    """Per-test pass/fail from an execution's stored results (JSON), in test order; tests the run never
    reached (a timeout cuts it short) count as failed."""
    results = json.loads(tests) if tests else []
    out = [bool(r.get("passed")) for r in results]
    return out + [False] * (total - len(out))


test_outcomes.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def pass_fraction(passed: int, total: int) -> float:
    """tests passed / tests, rounded to 4 places (the same number in every export format)."""
    return round(passed / total, 4) if total else 0.0


# --- writing ---------------------------------------------------------------------------------------
# The readable definition of a row: a dict per Triplet, serialized by pydantic-core (JsonlRow / ChatRow
# above are their schema, which the tests check every row against). `export` writes the same bytes
# faster (below).


def jsonl_row(x: Triplet) -> dict[str, Any]:
    """A `JsonlRow` as a dict."""
    return {
        "id": row_id(x.run, x.norm_hash, x.solution),
        "problem": x.problem,
        "tests": x.tests,
        "solution": x.solution,
        "provenance": {
            "run": x.run,
            "problem_id": x.problem_id,
            "solution_id": x.solution_id,
            "sample_index": x.sample_index,
            "selection_rule": x.selection_rule,
            "stages": x.stages,
            "shown_test": x.shown_test,
            "image_digest": x.image_digest,
            "tests_passed": x.tests_passed,
            "tests_total": x.tests_total,
            "test_outcomes": x.test_outcomes,
            "pass_fraction": pass_fraction(x.tests_passed, x.tests_total),
            "samples_drawn": x.samples_drawn,
            "samples_passed": x.samples_passed,
            "selection_threshold": x.selection_threshold,
        },
    }


def chat_row(x: Triplet, answer_format: AnswerFormat = "python-tags") -> dict[str, Any]:
    """A `ChatRow` as a dict. Raises ChatFormatError for a problem or solution the Llama 2 format
    cannot hold (it contains a control tag such as [/INST])."""
    answer = answer_text(x.solution, answer_format)
    messages = [{"role": "user", "content": x.problem}, {"role": "assistant", "content": answer}]
    prompt, answer_part = prompt_answer_text(x.problem, answer)
    return {
        "id": row_id(x.run, x.norm_hash, x.solution),
        "messages": messages,
        "text": prompt + answer_part,  # == chat_text(messages) for one turn (pinned by a test)
        "prompt": prompt,
        "answer": answer_part,
        "run": x.run,
    }


# The export itself writes each page as JSON text built directly from the page rows: the same bytes
# as `to_json(jsonl_row(x))` / `to_json(chat_row(x))` (a test compares every row of both), without a
# Triplet, a dict and a serializer call per row. Strings go through the stdlib's C JSON string encoder,
# which escapes exactly what pydantic-core does (", \\, control characters; UTF-8 kept as is); values
# shared by many rows (sampling parameters) are serialized once by pydantic-core itself.

_json_str = encode_basestring  # str -> JSON string literal, quotes included (C implementation)


def _json_opt(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


@functools.lru_cache(maxsize=1024)
def _json_cached(value: str | None) -> str:
    """`_json_opt` for the few values that repeat on every row (selection rule, sandbox image digest)."""
    return _json_opt(value)


@functools.lru_cache(maxsize=4096)
def _stage_head(model: str | None, params: str | None) -> str:
    """'{"model":...,"params":...,"seed":' for one distinct (model, params) of LLM calls."""
    return f'{{"model":{_json_opt(model)},"params":{to_json(_params(params)).decode()},"seed":'


def _stage_json(model: str | None, params: str | None, seed: int | None) -> str:
    return f"{_stage_head(model, params)}{'null' if seed is None else seed}}}"


# `"passed": true` in stored per-test results (no space on SQLite, one in PostgreSQL's JSONB text); a
# quote inside an error message is escaped (\"), so the pattern only ever matches the key itself.
_PASSED_KEY = re.compile(r'"passed":\s*(true|false)')


def _outcomes_json(tests: str | None, total: int) -> str:
    """== json of test_outcomes(tests, total), without decoding the results."""
    flags = _PASSED_KEY.findall(tests) if tests else []
    return "[" + ",".join(flags + ["false"] * (total - len(flags))) + "]"


def _is_val(example_id: str, fraction: float) -> bool:
    return fraction > 0 and int(example_id[:8], 16) / 2**32 < fraction  # == is_validation


def _jsonl_lines(page: Page, split_val: float, train: list[str], val: list[str]) -> int:
    """Append each row of `page` as a `JsonlRow` line to `train` or `val`; returns rows skipped (none)."""
    tests_from_table = {pid: tests_json(codes) for pid, codes in page.tests.items()}  # rows without tests_json
    run_json = {rid: _json_str(name) for rid, name in page.run_names.items()}
    problem_stage = {cid: _stage_json(*info) for cid, info in page.problem_calls.items()}
    no_stage = _stage_json(*_NO_CALL)
    stages: dict[CallInfo, str] = {}  # this page's distinct (model, params, seed) as JSON
    samples, threshold = page.samples, "null" if page.threshold is None else repr(float(page.threshold))
    val_below = split_val * 2**32  # is_validation: the id's first 32 bits / 2**32 < split_val, exactly
    sha256 = hashlib.sha256
    for row in page.rows:
        (_, rid, pid, problem, norm_hash, sid, code, sample_index, rule, digest, passed, total, pcall,
         t_model, t_params, t_seed, s_model, s_params, s_seed, tests, shown, exec_tests) = row  # fmt: skip
        if tests is None:
            tests = tests_from_table.get(pid, "[]")
        run = page.run_names[rid]
        example_id = sha256(f"{run}\x00{norm_hash}\x00{code}".encode()).hexdigest()[:24]  # == row_id
        t_call, s_call = (t_model, t_params, t_seed), (s_model, s_params, s_seed)
        if (t_stage := stages.get(t_call)) is None:
            t_stage = stages[t_call] = _stage_json(*t_call)
        if (s_stage := stages.get(s_call)) is None:
            s_stage = stages[s_call] = _stage_json(*s_call)
        line = (
            f'{{"id":"{example_id}","problem":{_json_str(problem)},"tests":{tests},'
            f'"solution":{_json_str(code)},"provenance":{{"run":{run_json[rid]},"problem_id":{pid},'
            f'"solution_id":{sid},"sample_index":{sample_index},"selection_rule":{_json_cached(rule)},'
            f'"stages":{{"problems":{no_stage if pcall is None else problem_stage.get(pcall, no_stage)},'
            f'"tests":{t_stage},"solutions":{s_stage}}},"shown_test":{"null" if shown is None else _json_str(shown)},'
            f'"image_digest":{_json_cached(digest)},"tests_passed":{passed},'
            f'"tests_total":{total},"test_outcomes":{_outcomes_json(exec_tests, total)},'
            f'"pass_fraction":{pass_fraction(passed, total)!r},"samples_drawn":{samples[pid][0]},'
            f'"samples_passed":{samples[pid][1]},"selection_threshold":{threshold}}}}}\n'
        )
        (val if int(example_id[:8], 16) < val_below else train).append(line)
    return 0


def _chat_lines(page: Page, split_val: float, train: list[str], val: list[str], answer_format: AnswerFormat) -> int:
    """Append each row of `page` as a `ChatRow` line to `train` or `val`; returns the rows skipped
    because the Llama 2 format cannot hold them (a control tag in the problem or the answer)."""
    run_json = {rid: _json_str(name) for rid, name in page.run_names.items()}
    tags, sha256, skipped = SPECIAL_TAGS, hashlib.sha256, 0
    for row in page.rows:
        problem, code = row[_PROBLEM], row[_SOLUTION]
        answer = answer_text(code, answer_format)
        if any(tag in problem or tag in answer for tag in tags):  # what prompt_answer_text refuses
            skipped += 1
            continue
        rid = row[_RUN_ID]
        run = page.run_names[rid]
        example_id = sha256(f"{run}\x00{row[_NORM_HASH]}\x00{code}".encode()).hexdigest()[:24]  # == row_id
        # == prompt_answer_text(problem, answer): the Llama 2 single-turn split at [/INST]
        prompt_json = _json_str(f"{BOS_TEXT}{B_INST} {problem.strip()} {E_INST}")
        answer_json = _json_str(f" {answer.strip()} {EOS_TEXT}")
        line = (
            f'{{"id":"{example_id}","messages":[{{"role":"user","content":{_json_str(problem)}}},'
            f'{{"role":"assistant","content":{_json_str(answer)}}}],"text":{prompt_json[:-1]}{answer_json[1:]},'
            f'"prompt":{prompt_json},"answer":{answer_json},"run":{run_json[rid]}}}\n'
        )  # JSON string escaping is per character, so text == prompt + answer is the two literals joined
        (val if _is_val(example_id, split_val) else train).append(line)
    return skipped


def val_path(out: Path) -> Path:
    """data/instruct.jsonl -> data/instruct.val.jsonl (a path without suffix gets ".val")."""
    return out.with_name(f"{out.stem}.val{out.suffix}") if out.suffix else out.with_name(out.name + ".val")


@dataclass
class ExportStats:
    train: int = 0
    validation: int = 0
    skipped_chat_format: int = 0
    train_path: str = ""
    validation_path: str | None = None
    removed_stale_validation: str | None = None

    @property
    def rows(self) -> int:
        return self.train + self.validation


def _page_text(page: Page, fmt: ExportFormat, split_val: float, answer_format: AnswerFormat) -> PageText:
    train: list[str] = []
    val: list[str] = []
    if fmt == "chat":
        skipped = _chat_lines(page, split_val, train, val, answer_format)
    else:
        skipped = _jsonl_lines(page, split_val, train, val)
    return PageText("".join(train).encode(), "".join(val).encode(), len(train), len(val), skipped)


def _window_text(reader: _PageReader, last: int, hi: int, fmt: ExportFormat, split_val: float,
                 answer_format: AnswerFormat) -> PageText:
    """The text of the page of triple ids (`last`, `hi`] (empty when no triple there passes the filters)."""
    page = reader.read(last, hi)
    return _EMPTY_PAGE if page is None else _page_text(page, fmt, split_val, answer_format)


@dataclass(frozen=True, slots=True)
class PageText:
    """One page of an export as the bytes of its training and validation lines."""

    train: bytes
    validation: bytes
    train_rows: int
    validation_rows: int
    skipped: int


_EMPTY_PAGE = PageText(b"", b"", 0, 0, 0)


def export(
    engine: sa.Engine,
    out: Path,
    *,
    fmt: ExportFormat = "jsonl",
    flt: ExportFilter = ExportFilter(),
    split_val: float = 0.0,
    answer_format: AnswerFormat = "python-tags",
    workers: int | None = None,
) -> ExportStats:
    """Write the export; returns the counts. Files appear (atomically renamed) only when complete.

    `workers` processes build the pages (default: one per CPU, at most 8; 1 builds them here), each in
    the same snapshot of the database (see `_page_texts`); the files are the same bytes either way."""
    if not 0.0 <= split_val < 1.0:
        raise UserError(f"--split-val must be in [0, 1), got {split_val}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + ([val_path(out)] if split_val > 0 else [])
    tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    stats = ExportStats(train_path=str(out), validation_path=str(paths[1]) if split_val > 0 else None)
    files = [open(p, "wb") for p in tmp]  # noqa: SIM115 - closed in finally
    try:
        for text in _page_texts(engine, flt, fmt, split_val, answer_format, workers or default_workers()):
            files[0].write(text.train)  # one write per page and file
            if text.validation:
                files[1].write(text.validation)
            stats.train += text.train_rows
            stats.validation += text.validation_rows
            stats.skipped_chat_format += text.skipped
        for fh in files:
            fh.close()
        for src, dst in zip(tmp, paths, strict=True):
            os.replace(src, dst)
        stale = val_path(out)
        if split_val == 0 and stale.exists():  # a validation file of an earlier export would look current
            stale.unlink()
            stats.removed_stale_validation = str(stale)
    finally:
        for fh in files:
            fh.close()
        for src in tmp:
            src.unlink(missing_ok=True)
    return stats


# --- pages built by worker processes -----------------------------------------------------------------
# Building a page (reading its rows, escaping them into JSON lines) is CPU work in Python, so a bigger
# export runs it in a process per CPU. Every worker reads in the same snapshot as the main process:
# PostgreSQL shares it (pg_export_snapshot / SET TRANSACTION SNAPSHOT). A SQLite snapshot cannot be
# shared, and need not be: the main process fixes the id windows in its own snapshot, and every row a
# window's triples reach (problem, tests, solution, execution, LLM calls, run name) is written once,
# before the triple that points at it, and never changed or deleted; a triple committed later gets a
# larger id than any window's end (SQLite row ids grow, nothing is ever deleted). So each worker reads
# exactly what the main process would have.

MAX_WORKERS = 8
_MIN_PAGES_PER_FORKED_WORKER = 8  # a forked worker starts in milliseconds, but a page crosses a pipe
_MIN_PAGES_PER_SPAWNED_WORKER = 25  # a spawned one imports SQLAlchemy first (about 0.7 s)


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def _page_texts(engine: sa.Engine, f: ExportFilter, fmt: ExportFormat, split_val: float,
                answer_format: AnswerFormat, workers: int) -> Iterator[PageText]:
    """Every page of the export as text, in triple id order: built here, or by `workers` processes when
    there are enough pages to keep them busy."""
    with _snapshot(engine) as conn:
        reader = make_reader(conn, f, provenance=fmt == "jsonl")
        windows = reader.windows(PAGE_ROWS)
        if f.rule is not None and f.dedup:
            workers = 1  # the graded reader dedups across pages in order
        context = _process_context()
        min_pages = workers * (_MIN_PAGES_PER_FORKED_WORKER if context.get_start_method() == "fork"
                               else _MIN_PAGES_PER_SPAWNED_WORKER)
        first = list(itertools.islice(windows, min_pages)) if workers > 1 else []
        if len(first) < min_pages:  # a small export (or workers=1): build the pages here
            for last, hi in itertools.chain(first, windows):
                yield _window_text(reader, last, hi, fmt, split_val, answer_format)
            return
        all_windows = first + list(windows)  # ids only: 500 pairs for a million rows
        imported = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar() if conn.dialect.name == "postgresql" else None
        url = engine.url.render_as_string(hide_password=False)
        with context.Pool(workers, initializer=_start_worker,
                          initargs=(url, imported, f, fmt, split_val, answer_format)) as pool:
            yield from pool.imap(_worker_page, all_windows)


def _process_context() -> Any:  # multiprocessing.context.BaseContext
    """fork where it is safe (Linux, a process with one thread: the CLI), else spawn."""
    import multiprocessing
    import threading

    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_worker_state: dict[str, Any] = {}


def _start_worker(url: str, imported: str | None, f: ExportFilter, fmt: ExportFormat, split_val: float,
                  answer_format: AnswerFormat) -> None:
    """A worker's own engine and read transaction, held until the worker exits."""
    from multiprocessing.util import Finalize

    engine = make_engine(url)
    stack = contextlib.ExitStack()
    conn = stack.enter_context(_snapshot(engine, imported))
    stack.callback(engine.dispose)
    Finalize(None, stack.close, exitpriority=10)
    _worker_state.update(reader=make_reader(conn, f, provenance=fmt == "jsonl"),
                         args=(fmt, split_val, answer_format))


def _worker_page(window: tuple[int, int]) -> PageText:
    return _window_text(_worker_state["reader"], *window, *_worker_state["args"])


# --- CLI -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="selfinstruct export",
        description="Export selected (problem, tests, solution) triples as JSONL or Llama 2 chat data.",
    )
    default_db = env_url()
    ap.add_argument(
        "--db",
        default=default_db,
        required=default_db is None,
        help="SQLAlchemy URL or SQLite path (default: $SELFINSTRUCT_DB)",
    )
    ap.add_argument("--run", action="append", default=[], help="only this run (repeatable); default: every run")
    ap.add_argument("--format", choices=("jsonl", "chat", "preference", "rl"), default="jsonl", dest="fmt",
                    help="jsonl / chat: selected triples; preference: (chosen, rejected) pairs (JSONL); "
                    "rl: one row per problem, verl's Parquet layout (db/graded_export.py)")
    ap.add_argument("--rule", default=None,
                    help="jsonl / chat: select from the stored executions by this rule (first, random, threshold, "
                    "best, all_passing) instead of the triples table; nothing is executed")
    ap.add_argument("--threshold", type=float, default=None, help="the threshold rule's minimum pass fraction")
    ap.add_argument("--seed", type=int, default=None, help="the random rule's seed (default: the run's config seed)")
    ap.add_argument("--chosen-min", type=float, default=1.0, help="preference: chosen pass at least this fraction")
    ap.add_argument("--rejected-max", type=float, default=0.5, help="preference: rejected pass at most this fraction")
    ap.add_argument("--pairs-per-problem", type=int, default=3, help="preference: at most K pairs per problem")
    ap.add_argument(
        "--out", required=True, type=Path, help="training file; validation goes to the sibling NAME.val.SUFFIX"
    )
    ap.add_argument(
        "--split-val", type=float, default=0.0, help="fraction for validation, by a stable hash of the row id"
    )
    ap.add_argument("--min-tests-passed", type=int, default=0, help="only solutions that passed at least K tests")
    ap.add_argument(
        "--since", type=datetime.fromisoformat, help="only triples selected at or after this date (ISO 8601)"
    )
    ap.add_argument("--dedup", action="store_true", help="keep one triple per problem hash across runs (the earliest)")
    ap.add_argument("--answer-format", choices=("python-tags", "plain"), default="python-tags")
    ap.add_argument("--workers", type=int, default=None,
                    help=f"processes building pages (default: one per CPU, at most {MAX_WORKERS}; 1: in this process)")
    return ap


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    engine = make_engine(args.db, must_exist=True)
    try:
        require_schema(engine)
        from db import selection
        from db.queries import get_run_id, run_names

        run_ids = [get_run_id(engine, name) for name in args.run]  # a missing run is a clear error, not an empty file
        graded = args.fmt in ("preference", "rl")
        if args.rule is not None or graded:
            if args.since is not None:
                raise UserError("--since filters the triples table: it does not combine with --rule, preference or rl")
            names = list(args.run) or run_names(engine)
            selection.require_executions(engine, run_ids or [get_run_id(engine, n) for n in names], names)
        if graded:
            if args.rule is not None:
                raise UserError(f"--rule selects jsonl / chat rows; {args.fmt} grades every sample itself")
            if not 0.0 <= args.split_val < 1.0:
                raise UserError(f"--split-val must be in [0, 1), got {args.split_val}")
            from db.graded_export import PreferenceOptions, write_graded

            opts = PreferenceOptions(args.chosen_min, args.rejected_max, args.pairs_per_problem)
            gstats, paths = write_graded(engine, args.out, args.fmt, args.run, args.split_val, opts, val_path(args.out))
            what = "pairs" if args.fmt == "preference" else "problems"
            msg = f"wrote {gstats.train} {args.fmt} {what} to {paths[0]}"
            if len(paths) > 1:
                msg += f" and {gstats.validation} to {paths[1]}"
            msg += f" (from {gstats.problems} final problems; nothing was executed)"
            if gstats.skipped_chat_format:
                msg += f"; skipped {gstats.skipped_chat_format} whose text contains Llama 2 control tags"
            print(msg)
            return 0
        seed = args.seed
        if args.rule is not None:
            if seed is None:
                seed = selection.run_seed(engine, run_ids[0]) if run_ids else 0
            selection.SelectionSpec.make(args.rule, args.threshold, seed)  # bad input: one line, before any file
        elif args.threshold is not None or args.seed is not None:
            raise UserError("--threshold and --seed go with --rule")
        flt = ExportFilter(
            runs=tuple(args.run), min_tests_passed=args.min_tests_passed, since=args.since, dedup=args.dedup,
            rule=args.rule, threshold=args.threshold, seed=seed or 0,
        )
        stats = export(
            engine, args.out, fmt=args.fmt, flt=flt, split_val=args.split_val, answer_format=args.answer_format,
            workers=args.workers,
        )
    finally:
        engine.dispose()
    msg = f"wrote {stats.train} training rows to {stats.train_path}"
    if stats.validation_path:
        msg += f" and {stats.validation} validation rows to {stats.validation_path}"
    if stats.skipped_chat_format:
        msg += f"; skipped {stats.skipped_chat_format} whose text contains Llama 2 control tags"
    if stats.removed_stale_validation:
        msg += f"; removed {stats.removed_stale_validation} (from an earlier export with --split-val)"
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
