"""Shared by the pipeline tests: a configuration around the scripted backend, and reading a run back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from db.engine import make_engine

SCRIPTED = "tests.generator.scripted_backend:ScriptedBackend"


def config_dict(db_path: Path, run: str = "e2e", **scripted_options: Any) -> dict[str, Any]:
    backend = {"kind": "plugin", "factory": SCRIPTED, "options": scripted_options}
    return {
        "run": run,
        "db": f"sqlite:///{db_path}",
        "seed": 1234,
        # 7 questions a call (5 new + a case-only duplicate + a contaminated one); 6 accepted never
        # happen, so the stage stops at max_calls, after two calls of nothing but duplicates.
        "problems": {"target": 6, "per_call": 7, "max_calls": 3, "batch_size": 2, "backend": backend},
        "tests": {"batch_size": 2, "backend": backend},
        "solutions": {"n": 10, "batch_size": 2, "backend": backend},
        "sandbox": {"workers": 2, "timeout_s": 3, "memory_mb": 256},
        "execution": {"batch_size": 8},
        "ray": {"enabled": False},
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def query_rows(db_url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """The rows of one read-only query against the run's database (an engine opened and disposed for it)."""
    engine = make_engine(db_url, must_exist=True)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params or {}).all()]
    finally:
        engine.dispose()


def triples(db_url: str, run: str) -> set[tuple[str, str, int]]:
    """(problem text, solution code, sample index) of every triple of `run`."""
    rows = query_rows(
        db_url,
        "SELECT p.text, s.code, s.sample_index FROM triples t "
        "JOIN runs r ON r.id = t.run_id JOIN problems p ON p.id = t.problem_id "
        "JOIN solutions s ON s.id = t.solution_id WHERE r.name = :run",
        {"run": run},
    )
    return {(text, code, index) for text, code, index in rows}


def table_counts(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url, must_exist=True)
    try:
        with engine.connect() as conn:
            return {
                table: int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")))
                for table in ("runs", "llm_calls", "problems", "tests", "solutions", "executions", "triples")
            }
    finally:
        engine.dispose()


def duplicate_rows(db_url: str) -> dict[str, int]:
    """Rows that repeat an identity (there must be none, whatever happened to the writer)."""
    identities = {
        "llm_calls": "run_id, stage, item_key, sample_index",
        "problems": "run_id, norm_hash",
        "tests": 'problem_id, "index"',
        "solutions": "problem_id, sample_index",
        "executions": "solution_id",
        "triples": "problem_id",
    }
    checks = {
        table: f"SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY {columns} HAVING count(*) > 1) AS repeated"
        for table, columns in identities.items()
    }
    engine = make_engine(db_url, must_exist=True)
    try:
        with engine.connect() as conn:
            return {name: int(conn.scalar(sa.text(sql))) for name, sql in checks.items()}
    finally:
        engine.dispose()
