"""A pool of identical Ray actors that survives losing some of them.

Work is cut into chunks, each actor holds at most `inflight_per_actor` chunks (one running, the next
queued so it never idles between calls), and results come back in input order. When an actor dies
(its process was killed, its node went away) the chunks it held are put back at the front of the
queue and the actor is replaced by a fresh one, which takes work once it is ready: a lost actor costs
only its in-flight work. A chunk
that has killed `max_chunk_retries` actors in a row is not tried again (a poison batch must not take
the whole cluster down one actor at a time). With `task_timeout_s`, an actor whose chunk runs past its
deadline (a hung engine, a wedged Docker daemon) is killed and handled the same way.

The actors are plain classes with a `ready()` method (raising what their constructor raised, so that
a bad configuration reaches the driver as one clear error), one work method and `close()`;
`ActorPool` knows nothing about LLMs or sandboxes (those are generator/scale.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from selfinstruct.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class ActorLostError(RuntimeError):
    """The same chunk was lost with its actor too many times."""


@dataclass
class _Slot:
    handle: ActorHandle
    inflight: int = 0
    starting: ray.ObjectRef | None = None  # a replacement's ready() call, until it answers
    start_deadline: float = 0.0


@dataclass
class PoolStats:
    """What happened over the pool's life, for run reports and tests."""

    actors_started: int = 0
    actors_replaced: int = 0
    chunks_resubmitted: int = 0
    chunks_done: int = 0
    timeouts: int = 0
    replaced_reasons: list[str] = field(default_factory=list)


class ActorPool(Generic[T, R]):
    """`map(items) -> results`, one result per item in order, spread over `size` actors.

    `make_actor()` returns a new actor handle (already `.options(...)`-ed); `method` names the actor
    method that takes a list of items and returns one result per item.
    """

    def __init__(
        self,
        make_actor: Callable[[], ActorHandle],
        size: int,
        method: str,
        *,
        what: str,
        inflight_per_actor: int = 2,
        max_chunk_retries: int = 3,
        ready_timeout_s: float = 600.0,
        task_timeout_s: float | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an actor pool needs at least one actor")
        self._make_actor = make_actor
        self._method = method
        self.what = what
        self.inflight_per_actor = inflight_per_actor
        self.max_chunk_retries = max_chunk_retries
        self.ready_timeout_s = ready_timeout_s
        self.task_timeout_s = task_timeout_s
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._killed: set[int] = set()  # id() of handles killed for a timeout, awaiting their failures
        self._slots = [_Slot(self._start()) for _ in range(size)]
        self._wait_ready([s.handle for s in self._slots])

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def actors(self) -> list[ActorHandle]:
        """The live handles, e.g. to ask each actor something or (in tests) to kill one."""
        return [s.handle for s in self._slots]

    def map(self, items: Sequence[T], chunk_size: int | None = None) -> list[R]:
        """Results in item order. Calls from several threads take turns (the slots are shared state)."""
        if not items:
            return []
        with self._lock:
            return self._map(items, chunk_size)

    def _map(self, items: Sequence[T], chunk_size: int | None) -> list[R]:
        if chunk_size is None:
            # ~4 chunks per actor: big enough to batch, small enough to balance and to lose little
            chunk_size = max(1, math.ceil(len(items) / (4 * self.size)))
        chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
        results: list[list[R] | None] = [None] * len(chunks)
        losses = [0] * len(chunks)
        queue = deque(range(len(chunks)))
        inflight: dict[ray.ObjectRef, tuple[_Slot, ActorHandle, int, float]] = {}
        try:
            while queue or inflight:
                self._dispatch(queue, chunks, inflight)
                starting = {s.starting: s for s in self._slots if s.starting is not None}
                waitables = [*inflight, *starting]
                if not waitables:
                    raise RuntimeError(f"{self.what}: work is queued but no actor is running or starting")
                done, _ = ray.wait(waitables, num_returns=1, timeout=self._wait_timeout(inflight))
                if not done:
                    self._check_starts()
                    self._kill_overdue(inflight)  # their chunks come back below as lost with the actor
                    continue
                for ref in done:
                    if ref in starting:
                        self._started(starting[ref])
                        continue
                    slot, handle, index, _ = inflight.pop(ref)
                    slot.inflight -= 1
                    try:
                        chunk_results = ray.get(ref)
                    except RayActorError as exc:
                        losses[index] += 1
                        self.stats.chunks_resubmitted += 1
                        if losses[index] > self.max_chunk_retries:
                            raise ActorLostError(
                                f"{self.what}: a batch of {len(chunks[index])} was lost with its actor "
                                f"{losses[index]} times; giving up ({_one_line(exc)})"
                            ) from None
                        self._replace(slot, handle, exc)
                        queue.appendleft(index)
                        continue
                    except RayTaskError as exc:
                        raise _unwrap(exc) from None
                    if len(chunk_results) != len(chunks[index]):
                        raise RuntimeError(
                            f"{self.what}: an actor returned {len(chunk_results)} results for {len(chunks[index])} items"
                        )
                    results[index] = chunk_results
                    self.stats.chunks_done += 1
        except BaseException:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
            raise
        return [r for chunk in results for r in chunk]  # type: ignore[union-attr]

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """Call one method on every actor (e.g. to read a property) and return the answers."""
        try:
            return ray.get([getattr(s.handle, method).remote(*args) for s in self._slots])
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    def close(self) -> None:
        """Let each actor release what it holds (engines, containers), then end it."""
        handles = [s.handle for s in self._slots]
        self._slots = []
        if not handles:
            return
        try:
            ray.wait([h.close.remote() for h in handles], num_returns=len(handles), timeout=60)
        except Exception:  # noqa: BLE001 - closing is best effort; the kill below ends them anyway
            pass
        for h in handles:
            ray.kill(h, no_restart=True)

    def __enter__(self) -> ActorPool[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals

    def _start(self) -> ActorHandle:
        self.stats.actors_started += 1
        return self._make_actor()

    def _wait_ready(self, handles: list[ActorHandle]) -> None:
        refs = [h.ready.remote() for h in handles]
        try:
            ray.get(refs, timeout=self.ready_timeout_s)
        except GetTimeoutError:
            for h in handles:
                ray.kill(h, no_restart=True)
            raise UserError(
                f"{self.what}: {len(handles)} actor(s) were not placed within {self.ready_timeout_s:g} s; "
                f"the cluster has {_resources()} (see docs/backends.md for the resources each actor needs)"
            ) from None
        except (RayActorError, RayTaskError) as exc:
            for h in handles:
                ray.kill(h, no_restart=True)
            cause = _unwrap(exc) if isinstance(exc, RayTaskError) else exc
            if isinstance(cause, UserError):
                raise cause from None
            raise UserError(f"{self.what}: an actor failed to start: {_one_line(cause)}") from None

    def _dispatch(
        self,
        queue: deque[int],
        chunks: list[list[T]],
        inflight: dict[ray.ObjectRef, tuple[_Slot, ActorHandle, int, float]],
    ) -> None:
        for _ in range(self.inflight_per_actor):
            for slot in self._slots:
                if not queue:
                    return
                if slot.starting is None and slot.inflight < self.inflight_per_actor:
                    index = queue.popleft()
                    ref = getattr(slot.handle, self._method).remote(chunks[index])
                    slot.inflight += 1
                    # a chunk may wait behind the ones dispatched to its actor before it
                    deadline = time.monotonic() + (self.task_timeout_s or 0.0) * slot.inflight
                    inflight[ref] = (slot, slot.handle, index, deadline)

    def _wait_timeout(self, inflight: dict[ray.ObjectRef, tuple[_Slot, ActorHandle, int, float]]) -> float | None:
        """Seconds until the next deadline: a chunk's (of an actor not killed already), a replacement's start."""
        self._killed &= {id(handle) for _, handle, _, _ in inflight.values()}  # forget handles now gone
        deadlines = [s.start_deadline for s in self._slots if s.starting is not None]
        if self.task_timeout_s is not None:
            deadlines += [d for _, handle, _, d in inflight.values() if id(handle) not in self._killed]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _started(self, slot: _Slot) -> None:
        """A replacement answered ready(): it takes work from now on (its start is not a chunk's time)."""
        ref, slot.starting = slot.starting, None
        try:
            ray.get(ref)
        except RayTaskError as exc:
            raise _unwrap(exc) from None  # its constructor failed: the configuration, not bad luck
        except RayActorError as exc:
            raise ActorLostError(f"{self.what}: a replacement actor died while starting ({_one_line(exc)})") from None

    def _check_starts(self) -> None:
        now = time.monotonic()
        if any(s.starting is not None and s.start_deadline <= now for s in self._slots):
            raise UserError(
                f"{self.what}: a replacement actor was not placed within {self.ready_timeout_s:g} s; "
                f"the cluster has {_resources()}"
            )

    def _kill_overdue(self, inflight: dict[ray.ObjectRef, tuple[_Slot, ActorHandle, int, float]]) -> None:
        """End the actors of chunks past their deadline (a hung engine or daemon): they are replaced."""
        now = time.monotonic()
        for _, handle, _, deadline in inflight.values():
            if deadline <= now and id(handle) not in self._killed:
                self._killed.add(id(handle))
                self.stats.timeouts += 1
                log.warning("%s: an actor ran past task_timeout_s=%g; replacing it", self.what, self.task_timeout_s)
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:  # noqa: BLE001 - it may be gone already
                    pass

    def _replace(self, slot: _Slot, dead: ActorHandle, exc: Exception) -> None:
        """Replace the slot's actor, once per death (its other in-flight chunks fail the same way)."""
        if slot.handle is not dead:
            return
        log.warning("%s: an actor was lost (%s); starting a replacement", self.what, _one_line(exc))
        try:
            ray.kill(dead, no_restart=True)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        slot.handle = self._start()
        slot.starting = slot.handle.ready.remote()
        slot.start_deadline = time.monotonic() + self.ready_timeout_s
        self.stats.actors_replaced += 1
        self.stats.replaced_reasons.append(_one_line(exc))


def _unwrap(exc: RayTaskError) -> BaseException:
    """The exception the actor raised (BackendError, UserError, ...), not Ray's wrapper of it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _resources() -> str:
    total = ray.cluster_resources()
    keys = [k for k in ("CPU", "GPU", "docker") if k in total] or sorted(total)[:5]
    return ", ".join(f"{k}={total[k]:g}" for k in keys) or "no resources"
