"""`selfinstruct export`: the selected triples as fine-tuning data (JSONL or Llama 2 chat), streamed.

    selfinstruct export --db runs/db.sqlite --format chat --out data/instruct.jsonl --split-val 0.05 --dedup

Files: PATH gets the training rows and, with --split-val > 0, the sibling PATH with ".val" before the
suffix (data/instruct.val.jsonl) gets the validation rows. Both are written to temporary files and
renamed when complete, so a failed export never leaves half a dataset behind; an export without
--split-val removes the .val sibling an earlier export left, which would look current. Every row's `id` is a
hash of (run, problem hash, solution): stable across exports, and the split is a stable hash of the
id, so a row never moves between train and validation when more runs are added.

Rows are read in keyset pages of triples (two queries per page, whatever the page holds), so
memory stays flat however many rows there are. --dedup keeps, for each problem hash, only the
earliest selected triple among the runs exported (done in SQL, so it too needs no memory).

`jsonl` rows: id, problem, tests (every assert), solution, provenance (run, models / sampling
parameters / seeds per stage, shown test, sandbox image digest, tests passed, sample index, ...).
`chat` rows: id, messages (user problem, assistant answer), text (the exact Llama 2 chat text,
"<s>[INST] ... [/INST] ... </s>", from model.chat), prompt and answer (split at [/INST]), run.
The answer is "[PYTHON]\\n{solution}\\n[/PYTHON]", the paper's format (--answer-format plain: the code).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from pydantic_core import to_json

from db.engine import env_url, make_engine, read_transaction, require_schema
from db.models import Execution, LLMCall, Problem, Run, Solution, Test, Triple
from model.chat import ChatFormatError, prompt_answer_text
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


@functools.lru_cache(maxsize=4096)
def _params(text: str | None) -> dict[str, Any] | None:
    """Sampling parameters decoded once per distinct value (a run has a handful), shared by its rows."""
    return None if text is None else json.loads(text)


def _stage(model: str | None, params: str | None, seed: int | None) -> dict[str, Any]:
    return {"model": model, "params": _params(params), "seed": seed}


def _candidates(f: ExportFilter, t: Any, p: Any, s: Any, e: Any, r: Any) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = [
        p.c.id == t.c.problem_id,
        s.c.id == t.c.solution_id,
        e.c.solution_id == s.c.id,
        r.c.id == t.c.run_id,
        e.c.outcome == "passed",
    ]
    if f.runs:
        conds.append(r.c.name.in_(list(f.runs)))
    if f.min_tests_passed:
        conds.append(e.c.tests_passed >= f.min_tests_passed)
    if f.since is not None:
        conds.append(t.c.created_at >= f.since)
    return conds


def _tests_of(conn: sa.Connection, problem_ids: list[int]) -> dict[int, list[str]]:
    """Every test of these problems, in index order. On the DB-API cursor: about five rows per
    exported row, where SQLAlchemy's per-row result processing was a third of the export's time."""
    quote = conn.dialect.identifier_preparer.quote
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"SELECT problem_id, code FROM {quote('tests')} WHERE problem_id IN ({', '.join([mark] * len(problem_ids))}) "
        f"ORDER BY problem_id, {quote('index')}"
    )
    tests_of: dict[int, list[str]] = defaultdict(list)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, problem_ids)
        for pid, code in cursor.fetchall():
            tests_of[pid].append(code)
    finally:
        cursor.close()
    return tests_of


def iter_triples(engine: sa.Engine, f: ExportFilter, page_rows: int = PAGE_ROWS) -> Iterator[Triplet]:
    """Stream the selected triples that pass `f`, in triple id order, one keyset page at a time."""
    t, p, s, e, r = (m.__table__ for m in (Triple, Problem, Solution, Execution, Run))
    shown, calls = Test.__table__.alias("shown"), LLMCall.__table__
    pcall, tcall, scall = calls.alias("pcall"), calls.alias("tcall"), calls.alias("scall")
    where = _candidates(f, t, p, s, e, r)
    if f.dedup:  # the earliest triple with this problem hash among the exported candidates wins
        t2, p2, s2, e2, r2 = (x.alias(f"{x.name}_2") for x in (t, p, s, e, r))
        where.append(
            ~sa.exists().where(*_candidates(f, t2, p2, s2, e2, r2), p2.c.norm_hash == p.c.norm_hash, t2.c.id < t.c.id)
        )

    def raw_json(col: sa.ColumnElement) -> sa.ColumnElement:
        return sa.cast(col, sa.Text)  # decoded by _params, once per distinct value

    page = (
        sa.select(
            t.c.id,
            r.c.name,
            p.c.id,
            p.c.text,
            p.c.norm_hash,
            s.c.id,
            s.c.code,
            s.c.sample_index,
            t.c.selection_rule,
            shown.c.code,
            e.c.image_digest,
            e.c.tests_passed,
            e.c.tests_total,
            pcall.c.model,
            raw_json(pcall.c.params),
            pcall.c.seed,
            tcall.c.model,
            raw_json(tcall.c.params),
            tcall.c.seed,
            scall.c.model,
            raw_json(scall.c.params),
            scall.c.seed,
        )
        .select_from(t)
        .join(p, p.c.id == t.c.problem_id)
        .join(s, s.c.id == t.c.solution_id)
        .join(e, e.c.solution_id == s.c.id)
        .join(r, r.c.id == t.c.run_id)
        .outerjoin(shown, shown.c.id == s.c.shown_test_id)
        .outerjoin(pcall, pcall.c.id == p.c.call_id)
        .outerjoin(tcall, tcall.c.id == p.c.tests_call_id)
        .outerjoin(scall, scall.c.id == s.c.call_id)
        .where(*where)
        .order_by(t.c.id)
        .limit(page_rows)
    )
    last = 0
    with read_transaction(engine) as conn:  # one snapshot for the whole export
        while rows := conn.execute(page.where(t.c.id > last)).all():
            last = rows[-1][0]
            problem_ids = [row[2] for row in rows]
            tests_of = _tests_of(conn, problem_ids)
            for (
                _,
                run,
                pid,
                text,
                norm_hash,
                sid,
                code,
                sample_index,
                rule,
                shown_code,
                digest,
                passed,
                total,
                p_model,
                p_params,
                p_seed,
                t_model,
                t_params,
                t_seed,
                s_model,
                s_params,
                s_seed,
            ) in rows:
                yield Triplet(
                    run=run,
                    problem_id=pid,
                    problem=text,
                    norm_hash=norm_hash,
                    solution_id=sid,
                    solution=code,
                    sample_index=sample_index,
                    selection_rule=rule,
                    tests=tests_of[pid],
                    shown_test=shown_code,
                    image_digest=digest,
                    tests_passed=passed,
                    tests_total=total,
                    stages={
                        "problems": _stage(p_model, p_params, p_seed),
                        "tests": _stage(t_model, t_params, t_seed),
                        "solutions": _stage(s_model, s_params, s_seed),
                    },
                )


# --- writing ---------------------------------------------------------------------------------------
# Rows are built as plain dicts and serialized by pydantic-core (about 2.5x faster than validating
# a model per row); JsonlRow / ChatRow above are their schema, which the tests check every row against.


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


def export(
    engine: sa.Engine,
    out: Path,
    *,
    fmt: ExportFormat = "jsonl",
    flt: ExportFilter = ExportFilter(),
    split_val: float = 0.0,
    answer_format: AnswerFormat = "python-tags",
) -> ExportStats:
    """Write the export; returns the counts. Files appear (atomically renamed) only when complete."""
    if not 0.0 <= split_val < 1.0:
        raise UserError(f"--split-val must be in [0, 1), got {split_val}")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + ([val_path(out)] if split_val > 0 else [])
    tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    stats = ExportStats(train_path=str(out), validation_path=str(paths[1]) if split_val > 0 else None)
    files = [open(p, "wb") for p in tmp]  # noqa: SIM115 - closed in finally
    try:
        for x in iter_triples(engine, flt):
            if fmt == "chat":
                try:
                    row = chat_row(x, answer_format)
                except ChatFormatError:
                    stats.skipped_chat_format += 1
                    continue
            else:
                row = jsonl_row(x)
            val = is_validation(row["id"], split_val)
            files[1 if val else 0].write(to_json(row) + b"\n")  # UTF-8 JSON, one row per line
            if val:
                stats.validation += 1
            else:
                stats.train += 1
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
    ap.add_argument("--format", choices=("jsonl", "chat"), default="jsonl", dest="fmt")
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
    return ap


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    engine = make_engine(args.db, must_exist=True)
    try:
        require_schema(engine)
        if args.run:
            from db.queries import get_run_id

            for name in args.run:
                get_run_id(engine, name)  # a missing run is a clear error, not an empty file
        flt = ExportFilter(
            runs=tuple(args.run), min_tests_passed=args.min_tests_passed, since=args.since, dedup=args.dedup
        )
        stats = export(
            engine, args.out, fmt=args.fmt, flt=flt, split_val=args.split_val, answer_format=args.answer_format
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
