"""The schema: one table per pipeline artefact, each row traceable to the LLM call that made it.

Unique constraints carry the idempotency of the whole pipeline: a stage that reruns a batch inserts
with ON CONFLICT DO NOTHING, so a crash at any moment followed by a restart leaves exactly the rows
an uninterrupted run leaves (see db/queries.py).

    Run ─┬─ LLMCall (stage, item_key, sample_index)          one row per sampled completion
         ├─ Problem (norm_hash unique per run) ─┬─ Test (index)
         │                                      ├─ Solution (sample_index) ── Execution (1:1)
         └─ Triple (one per problem) ───────────┘
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSON on every dialect, JSONB on PostgreSQL (indexable, compact).
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

RUN_STATUSES = ("running", "finished", "failed")
STAGES = ("problems", "tests", "solutions")
PROBLEM_STATUSES = ("accepted", "near_duplicate", "contaminated")
STAGE_STATUSES = ("pending", "done", "failed")
SELECTION_RULES = ("first", "random")


class Base(DeclarativeBase):
    # Stable constraint names, so Alembic migrations can refer to them on every dialect.
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _created_at() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


class Run(Base):
    """One pipeline run: its configuration (and fingerprint, to refuse resuming under another config),
    and the lease of the one driver that works on it."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    config_fingerprint: Mapped[str] = mapped_column(sa.String(128))
    code_version: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[str] = mapped_column(sa.String(16), default="running")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now(), nullable=False
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # the driver process holding the run (db/lease.py) and when it last said it is alive
    driver: Mapped[str | None] = mapped_column(sa.String(300))
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.CheckConstraint(f"status IN {RUN_STATUSES}", name="status"),)


class LLMCall(Base):
    """One sampled completion: prompt, output, sampling parameters, seed, tokens and latency.

    `item_key` is the call's identity within its stage ("call-17" for the 17th problem-writing call,
    "problem-42" for the tests and solutions of problem 42); with `sample_index` it is unique per run,
    which is what makes recording a stage's results idempotent. The `items_*` counters are filled for
    problem-writing calls: questions parsed, inserted, and dropped as exact duplicates.
    """

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(sa.String(16))
    item_key: Mapped[str] = mapped_column(sa.String(100))
    sample_index: Mapped[int] = mapped_column(default=0)
    model: Mapped[str] = mapped_column(sa.String(200))
    prompt: Mapped[str] = mapped_column(sa.Text)
    completion: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    latency_s: Mapped[float] = mapped_column(sa.Float, default=0.0)
    finish_reason: Mapped[str] = mapped_column(sa.String(16))
    items_parsed: Mapped[int | None]
    items_inserted: Mapped[int | None]
    items_duplicate: Mapped[int | None]
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        sa.UniqueConstraint("run_id", "stage", "item_key", "sample_index", name="uq_llm_calls_identity"),
        sa.CheckConstraint(f"stage IN {STAGES}", name="stage"),
    )


class Problem(Base):
    """A generated question. Exact duplicates (same normalized-text hash) are never stored twice in a
    run; near-duplicates and benchmark-contaminated questions are stored with the reason, not used.

    `tests_status` / `solutions_status` make the table the work queue of the later stages;
    `tests_call_id` is the call that wrote (or failed to write) the tests; `selection_check` queues
    the problem for triple selection when new executions of its solutions come in. `tests_json` is the
    problem's tests (the `tests` rows, in index order) as the JSON array an export row carries, written
    in the same transaction as those rows: the export reads one column instead of five rows per triple.
    """

    __tablename__ = "problems"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    call_id: Mapped[int | None] = mapped_column(sa.ForeignKey("llm_calls.id", ondelete="SET NULL"))
    text: Mapped[str] = mapped_column(sa.Text)
    norm_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default="accepted")
    reason: Mapped[str | None] = mapped_column(sa.Text)
    tests_status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    tests_reason: Mapped[str | None] = mapped_column(sa.Text)
    tests_call_id: Mapped[int | None] = mapped_column(sa.ForeignKey("llm_calls.id", ondelete="SET NULL"))
    tests_json: Mapped[str | None] = mapped_column(sa.Text)
    solutions_status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    solutions_reason: Mapped[str | None] = mapped_column(sa.Text)
    # set when an execution of one of its solutions is recorded; selection clears it once final
    selection_check: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        # hash first: the same index serves "unique per run" and the export's cross-run dedup lookup
        sa.UniqueConstraint("norm_hash", "run_id", name="uq_problems_hash_run"),
        sa.CheckConstraint(f"status IN {PROBLEM_STATUSES}", name="status"),
        sa.CheckConstraint(f"tests_status IN {STAGE_STATUSES}", name="tests_status"),
        sa.CheckConstraint(f"solutions_status IN {STAGE_STATUSES}", name="solutions_status"),
        sa.Index("ix_problems_tests_queue", "run_id", "status", "tests_status"),
        sa.Index("ix_problems_solutions_queue", "run_id", "tests_status", "solutions_status"),
        sa.Index("ix_problems_selection_queue", "run_id", "selection_check"),
    )


class Test(Base):
    """One assert statement (its "# Test case n:" comment stripped); `shown` marks the one the solver saw."""

    __tablename__ = "tests"
    __test__ = False  # not a pytest test class

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(sa.ForeignKey("problems.id", ondelete="CASCADE"))
    index: Mapped[int]
    code: Mapped[str] = mapped_column(sa.Text)
    shown: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (sa.UniqueConstraint("problem_id", "index", name="uq_tests_problem_index"),)


class Solution(Base):
    """One of the n sampled solutions: the code between [PYTHON] tags, or why none could be parsed."""

    __tablename__ = "solutions"

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(sa.ForeignKey("problems.id", ondelete="CASCADE"))
    sample_index: Mapped[int]
    call_id: Mapped[int | None] = mapped_column(sa.ForeignKey("llm_calls.id", ondelete="SET NULL"))
    code: Mapped[str | None] = mapped_column(sa.Text)
    parse_status: Mapped[str] = mapped_column(sa.String(32))
    parse_error: Mapped[str | None] = mapped_column(sa.Text)
    shown_test_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tests.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (sa.UniqueConstraint("problem_id", "sample_index", name="uq_solutions_problem_sample"),)


class Execution(Base):
    """The sandbox's verdict on one solution against every test of its problem."""

    __tablename__ = "executions"

    id: Mapped[int] = mapped_column(primary_key=True)
    solution_id: Mapped[int] = mapped_column(sa.ForeignKey("solutions.id", ondelete="CASCADE"), unique=True)
    outcome: Mapped[str] = mapped_column(sa.String(16))
    tests: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    tests_passed: Mapped[int]
    tests_total: Mapped[int]
    duration_ms: Mapped[float] = mapped_column(sa.Float)
    stdout: Mapped[str] = mapped_column(sa.Text, default="")
    stderr: Mapped[str] = mapped_column(sa.Text, default="")
    image_digest: Mapped[str | None] = mapped_column(sa.String(200))
    runtime: Mapped[str | None] = mapped_column(sa.String(16))  # runc | runsc (migration 0008)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (sa.Index("ix_executions_outcome", "outcome"),)


class Triple(Base):
    """A selected (problem, tests, solution) example: at most one per problem."""

    __tablename__ = "triples"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(sa.ForeignKey("problems.id", ondelete="CASCADE"), unique=True)
    solution_id: Mapped[int] = mapped_column(sa.ForeignKey("solutions.id", ondelete="CASCADE"))
    selection_rule: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        sa.CheckConstraint(f"selection_rule IN {SELECTION_RULES}", name="selection_rule"),
        sa.Index("ix_triples_run", "run_id"),
    )
