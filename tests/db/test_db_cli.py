"""`selfinstruct db upgrade|stats|runs` through the real console script, and the errors users can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from db_workload import run_pipeline

from db.engine import head_revision, make_engine, upgrade

SELFINSTRUCT = Path(sys.executable).with_name("selfinstruct")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SELFINSTRUCT), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.timeout(180)
def test_upgrade_then_stats(db_url: str) -> None:
    up = cli("db", "upgrade", "--db", db_url)
    assert up.returncode == 0, up.stderr
    assert f"(empty) -> {head_revision()}" in up.stdout
    assert f"already at schema revision {head_revision()}" in cli("db", "upgrade", "--db", db_url).stdout
    assert "no runs yet" in cli("db", "stats", "--db", db_url).stdout
    engine = make_engine(db_url)
    run_pipeline(engine, "run-a")
    engine.dispose()
    stats = cli("db", "stats", "--db", db_url)
    assert stats.returncode == 0, stats.stderr
    assert "run run-a" in stats.stdout and "triples" in stats.stdout and "pass rate" in stats.stdout
    js = cli("db", "stats", "--json", "--run", "run-a", env={"SELFINSTRUCT_DB": db_url})  # --db from the environment
    funnel = json.loads(js.stdout)
    assert funnel["run"]["name"] == "run-a" and funnel["triples"]["count"] > 0
    runs = cli("db", "runs", "--db", db_url)
    assert runs.stdout.split("\t")[1] == "run-a"


@pytest.mark.timeout(120)
def test_older_schema_gives_the_upgrade_command(db_url: str, tmp_path: Path) -> None:
    upgrade(make_engine(db_url), "0001")
    err = one_line_error(cli("db", "stats", "--db", db_url))
    assert "revision 0001" in err and "selfinstruct db upgrade --db" in err
    err = one_line_error(cli("export", "--db", db_url, "--out", str(tmp_path / "x.jsonl")))
    assert "selfinstruct db upgrade --db" in err
    assert cli("db", "upgrade", "--db", db_url).returncode == 0
    assert cli("db", "stats", "--db", db_url).returncode == 0


@pytest.mark.timeout(120)
def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    err = one_line_error(cli("db", "stats", "--db", "postgresql+psycopg2://u:secret@127.0.0.1:1/x"))
    assert "cannot reach the database" in err and "secret" not in err
    err = one_line_error(cli("db", "stats", "--db", str(tmp_path / "missing.db")))
    assert "no database at" in err and "selfinstruct db upgrade" in err
    err = one_line_error(cli("export", "--db", "nosuchdialect://x", "--out", str(tmp_path / "o.jsonl")))
    assert "cannot use database URL" in err
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert cli("db", "upgrade", "--db", db).returncode == 0
    err = one_line_error(cli("db", "stats", "--db", db, "--run", "nope"))
    assert "no run named 'nope'" in err
    empty = tmp_path / "empty.db"
    empty.touch()
    err = one_line_error(cli("db", "stats", "--db", str(empty)))
    assert "no selfinstruct schema" in err
