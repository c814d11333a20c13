"""One driver per run: a lease on the run's row, kept alive by a heartbeat.

The unique constraints make every stage idempotent in rows, not in cost: two drivers on one run (a
job submitted twice, a restart while the old driver still runs on a partitioned node) would both take
the same pending batches and pay for the same LLM calls and sandbox time. So a driver holds the run's
lease while it works. Recording stays safe either way; the lease guards the work.

A driver is named `machine:pid:token`, where the machine is the host name and, on Linux, the PID
namespace (two containers can share a host name). The lease can be taken when nobody holds it, when
its heartbeat is older than the TTL (the holder died or lost the database), when the holder is a
process of this machine that no longer exists (a crash restarted on the same node need not wait),
or when the caller takes it over. A driver whose heartbeat finds the lease taken stops after the
batches it holds. Heartbeats carry the writer's clock; nodes are assumed within a few seconds of one
another, far below the TTL.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from db.engine import write_transaction
from db.models import Run
from selfinstruct.errors import UserError

LEASE_TTL_S = 60.0  # a holder silent this long is presumed gone
HEARTBEAT_S = 10.0  # how often a holder renews

runs_t = Run.__table__


class RunBusy(UserError):
    """Another live driver holds the run."""


class LeaseLost(UserError):
    """This driver's lease was taken over by another one."""


def _machine() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}[{namespace.removeprefix('pid:').strip('[]')}]"


def new_driver_id() -> str:
    """This process's name as a lease holder (a fresh token per driver, so two drivers in one process differ)."""
    return f"{_machine()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; we write them in UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _process_gone(driver: str) -> bool:
    """Whether `driver` is a process of this machine that has ended."""
    machine, _, pid = driver.rpartition(":")[0].rpartition(":")
    if machine != _machine():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    # a killed driver its parent has not reaped yet is a zombie: still signalable, but gone
    return is_zombie(int(pid))


def is_zombie(pid: int) -> bool:
    """Whether process `pid` has ended but not been reaped (Linux's /proc; False where unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def holder_age_s(heartbeat_at: datetime | None) -> float:
    """Seconds since the holder's last heartbeat (infinite without one)."""
    return float("inf") if heartbeat_at is None else (_now() - _utc(heartbeat_at)).total_seconds()


def claim(
    conn: Connection, run_id: int, run_name: str, driver: str, *, ttl_s: float = LEASE_TTL_S, take_over: bool = False
) -> None:
    """Take the run's lease for `driver` inside the caller's write transaction, or raise RunBusy."""
    row = conn.execute(
        sa.select(runs_t.c.driver, runs_t.c.heartbeat_at).where(runs_t.c.id == run_id).with_for_update()
    ).one()
    holder, age = row.driver, holder_age_s(row.heartbeat_at)
    if holder and holder != driver and not take_over and age < ttl_s and not _process_gone(holder):
        raise RunBusy(
            f"run {run_name!r} is being driven by {holder} (last heartbeat {max(age, 0):.0f} s ago): let it "
            f"finish or stop it; if that process is gone, its lease lapses {ttl_s:.0f} s after its last "
            "heartbeat, or rerun with --take-over"
        )
    conn.execute(sa.update(runs_t).where(runs_t.c.id == run_id).values(driver=driver, heartbeat_at=_now()))


def renew(engine: Engine, run_id: int, driver: str) -> bool:
    """Refresh `driver`'s heartbeat; False when the lease is no longer its own."""
    with write_transaction(engine) as conn:
        result = conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.id == run_id, runs_t.c.driver == driver)
            .values(heartbeat_at=_now(), updated_at=runs_t.c.updated_at)  # a heartbeat is not a change of the run
        )
        return result.rowcount == 1


def release(conn: Connection, run_id: int, driver: str) -> bool:
    """Give the lease up inside the caller's transaction; False when it was no longer `driver`'s."""
    result = conn.execute(
        sa.update(runs_t).where(runs_t.c.id == run_id, runs_t.c.driver == driver).values(driver=None, heartbeat_at=None)
    )
    return result.rowcount == 1


class Heartbeat:
    """Renews a held lease every `interval_s` in a daemon thread; calls `on_lost(holder)` once if another
    driver took it. A failed renewal (the database briefly away) is retried at the next beat: the lease
    only lapses if the database stays unreachable for the whole TTL."""

    def __init__(
        self,
        engine: Engine,
        run_id: int,
        driver: str,
        on_lost: Callable[[str | None], None],
        *,
        interval_s: float = HEARTBEAT_S,
    ) -> None:
        self.engine, self.run_id, self.driver = engine, run_id, driver
        self.on_lost = on_lost
        self.interval_s = interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if renew(self.engine, self.run_id, self.driver):
                    continue
            except (sa.exc.SQLAlchemyError, UserError):  # UserError: db.engine's "unreachable database"
                continue
            self.lost = True
            holder = None
            try:
                with self.engine.connect() as conn:
                    holder = conn.scalar(sa.select(runs_t.c.driver).where(runs_t.c.id == self.run_id))
            except (sa.exc.SQLAlchemyError, UserError):
                pass
            self.on_lost(holder)
            return
