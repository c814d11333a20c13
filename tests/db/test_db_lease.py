"""The run lease: one driver works on a run at a time; a dead or lapsed holder frees it (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from db import lease, queries
from db.cli import format_funnel
from db.cli import main as db_main
from db.models import Run

runs_t = Run.__table__


def _start(engine: sa.Engine, driver: str | None, **kwargs) -> int:
    return queries.start_run(engine, "r", {"a": 1}, "fp", "v", driver=driver, **kwargs)


def _holder(engine: sa.Engine, run_id: int) -> tuple[str | None, str]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs_t.c.driver, runs_t.c.status).where(runs_t.c.id == run_id)).one()
    return row.driver, row.status


def _set_holder(engine: sa.Engine, run_id: int, driver: str, age_s: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.id == run_id)
            .values(driver=driver, heartbeat_at=datetime.now(UTC) - timedelta(seconds=age_s))
        )


def test_a_second_live_driver_is_refused_with_one_line_naming_the_holder_and_the_fix(engine, capsys):
    first, second = lease.new_driver_id(), lease.new_driver_id()
    run_id = _start(engine, first)
    assert _holder(engine, run_id) == (first, "running")
    with pytest.raises(lease.RunBusy) as exc:
        _start(engine, second)
    msg = str(exc.value)
    assert "\n" not in msg and first in msg and "--take-over" in msg and "lapses 60 s" in msg
    assert _start(engine, first) == run_id  # the holder itself resumes freely
    assert _holder(engine, run_id) == (first, "running")
    shown = format_funnel(queries.funnel(engine, run_id)).splitlines()[0]  # `selfinstruct db stats`
    assert f"running, code v, driven by {first}, last heartbeat 0 s ago" in shown
    assert db_main(["runs", "--db", engine.url.render_as_string(hide_password=False)]) == 0  # `db runs`
    assert capsys.readouterr().out.rstrip("\n").endswith(f"\tdriven by {first} (last heartbeat 0 s ago)")


def test_a_lapsed_lease_is_taken_and_the_old_driver_can_no_longer_renew_or_finish(engine):
    old, new = lease.new_driver_id(), lease.new_driver_id()
    run_id = _start(engine, old)
    _set_holder(engine, run_id, old, age_s=lease.LEASE_TTL_S + 5)
    assert _start(engine, new) == run_id
    assert lease.renew(engine, run_id, old) is False
    assert lease.renew(engine, run_id, new) is True
    assert queries.finish_run(engine, run_id, "failed", driver=old) is False
    assert _holder(engine, run_id) == (new, "running")  # the old driver's "failed" did not land
    assert queries.finish_run(engine, run_id, "finished", driver=new) is True
    assert _holder(engine, run_id) == (None, "finished")
    assert _start(engine, old) == run_id  # nobody holds it now


def test_a_holder_process_of_this_machine_that_ended_frees_the_lease_at_once(engine):
    run_id = _start(engine, None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    machine = lease.new_driver_id().rsplit(":", 2)[0]
    _set_holder(engine, run_id, f"{machine}:{int(dead.stdout)}:deadbeef", age_s=1)
    me = lease.new_driver_id()
    assert _start(engine, me) == run_id
    # the same on another machine: its pid says nothing here, so only the heartbeat's age counts
    _set_holder(engine, run_id, f"elsewhere:{int(dead.stdout)}:deadbeef", age_s=1)
    with pytest.raises(lease.RunBusy, match="elsewhere"):
        _start(engine, me)


def test_an_unreaped_killed_holder_counts_as_gone(engine):
    run_id = _start(engine, None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        machine = lease.new_driver_id().rsplit(":", 2)[0]
        _set_holder(engine, run_id, f"{machine}:{child.pid}:zombie00", age_s=1)
        with pytest.raises(lease.RunBusy):
            _start(engine, lease.new_driver_id())  # alive
        child.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not lease.is_zombie(child.pid):  # reaped only below
            time.sleep(0.02)
        assert lease.is_zombie(child.pid)
        assert _start(engine, lease.new_driver_id()) == run_id
    finally:
        child.kill()
        child.wait(timeout=10)


def test_take_over_claims_a_live_lease(engine):
    first, second = lease.new_driver_id(), lease.new_driver_id()
    run_id = _start(engine, first)
    assert _start(engine, second, take_over=True) == run_id
    assert _holder(engine, run_id) == (second, "running")


def test_runs_without_a_driver_leave_the_lease_alone(engine):
    holder = lease.new_driver_id()
    run_id = _start(engine, holder)
    assert _start(engine, None) == run_id  # tools and tests that record directly
    assert queries.finish_run(engine, run_id, "finished") is True
    assert _holder(engine, run_id) == (holder, "finished")


@pytest.mark.timeout(60)
def test_the_heartbeat_renews_and_reports_a_take_over(engine):
    me, other = lease.new_driver_id(), lease.new_driver_id()
    run_id = _start(engine, me)
    _set_holder(engine, run_id, me, age_s=30)
    lost: list[str | None] = []
    reported = threading.Event()

    def on_lost(holder: str | None) -> None:
        lost.append(holder)
        reported.set()

    with lease.Heartbeat(engine, run_id, me, on_lost, interval_s=0.05) as beat:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                age = lease.holder_age_s(conn.scalar(sa.select(runs_t.c.heartbeat_at).where(runs_t.c.id == run_id)))
            if age < 5:
                break
            time.sleep(0.05)
        assert age < 5  # renewed
        _start(engine, other, take_over=True)
        assert reported.wait(20)
        assert beat.lost and lost == [other]
