"""Resumability: the driver, SIGKILLed at random moments and restarted, ends exactly like an uninterrupted
run; a second driver on a running run is refused, or takes it over and the first one stops."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.generator.pipeline_helpers import config_dict, duplicate_rows, table_counts, triples, write_config
from tests.generator.scripted_backend import EXPECTED_TRIPLES

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6


def _driver(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "generator", "run", "--config", str(config), "--no-progress", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _counts(url: str) -> dict[str, int] | None:
    try:
        return table_counts(url)
    except Exception:  # noqa: BLE001 - no database or no schema yet
        return None


def _wait_for_rows(process: subprocess.Popen, url: str, table: str, timeout: float = 90) -> None:
    """Until the driver has written rows to `table` (or ended, or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        counts = _counts(url)
        if counts and counts[table] > 0:
            return
        time.sleep(0.1)


def _finish(process: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkilled_driver_resumes_to_exactly_the_uninterrupted_result(tmp_path, docker_client):
    # Each backend call takes 0.8 s, so the run lasts long enough for every kill to land mid-run.
    reference_db = tmp_path / "reference.db"
    reference = write_config(tmp_path / "reference.yaml", config_dict(reference_db, delay_s=0.8))
    _finish(_driver(reference))
    reference_url = f"sqlite:///{reference_db}"
    expected = triples(reference_url, "e2e")
    assert {(text, code) for text, code, _ in expected} == EXPECTED_TRIPLES

    killed_db = tmp_path / "killed.db"
    killed = write_config(tmp_path / "killed.yaml", config_dict(killed_db, delay_s=0.8))
    killed_url = f"sqlite:///{killed_db}"
    rng = random.Random(7)
    kills, seen = 0, []
    while kills < KILLS:
        process = _driver(killed)
        # Kill at a random moment after the run has made some progress since the last kill, so the
        # kills land all through the run (startup, each stage, between and inside batches).
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            if _counts(killed_url) not in (None, *seen[-1:]):
                break
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            break  # it finished before the kill: too few kills (asserted below)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
        seen.append(_counts(killed_url))
    print("table counts after each kill:", *seen, sep="\n  ")
    assert kills >= 5, f"the run finished after {kills} kills; make the backend slower"
    assert len(set(map(str, seen))) == kills, seen  # each kill found the run further along

    _finish(_driver(killed))
    assert triples(killed_url, "e2e") == expected
    assert table_counts(killed_url) == table_counts(reference_url)
    assert duplicate_rows(killed_url) == dict.fromkeys(duplicate_rows(killed_url), 0)
    with sqlite3.connect(killed_db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_sigterm_stops_gracefully_and_the_rerun_completes(tmp_path, docker_client):
    db = tmp_path / "term.db"
    url = f"sqlite:///{db}"
    config = write_config(tmp_path / "term.yaml", config_dict(db, delay_s=0.8))
    process = _driver(config)
    _wait_for_rows(process, url, "solutions")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output.decode(errors="replace")[-2000:]
    assert b"interrupted: finishing the batches in flight" in output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone() == ("failed",)
    _finish(_driver(config))
    assert {(text, code) for text, code, _ in triples(url, "e2e")} == EXPECTED_TRIPLES
    assert duplicate_rows(url) == dict.fromkeys(duplicate_rows(url), 0)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_driver_is_refused_and_a_take_over_stops_the_first(tmp_path, docker_client):
    db = tmp_path / "two.db"
    url = f"sqlite:///{db}"
    # calls of 3 s: the run outlasts the first driver's next heartbeat (every 10 s) after the take-over
    config = write_config(tmp_path / "two.yaml", config_dict(db, delay_s=3.0))
    first = _driver(config)
    _wait_for_rows(first, url, "problems")
    assert first.poll() is None, "the first driver ended before the second one started"

    second = _driver(config)
    output, _ = second.communicate(timeout=60)
    lines = output.decode(errors="replace").strip().splitlines()
    assert second.returncode == 2, lines
    assert lines[-1].startswith("error: run 'e2e' is being driven by ") and "--take-over" in lines[-1], lines
    with sqlite3.connect(db) as conn:  # refused before any work: every call row is the first driver's
        assert conn.execute("SELECT status FROM runs").fetchone() == ("running",)

    third = _driver(config, "--take-over")
    output, _ = first.communicate(timeout=120)  # its next heartbeat (10 s) finds the lease taken
    assert first.returncode == 2, output.decode(errors="replace")[-2000:]
    assert b"was taken over by " in output
    _finish(third)
    assert {(text, code) for text, code, _ in triples(url, "e2e")} == EXPECTED_TRIPLES
    assert duplicate_rows(url) == dict.fromkeys(duplicate_rows(url), 0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, driver FROM runs").fetchone() == ("finished", None)
