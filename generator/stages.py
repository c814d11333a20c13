"""The work of each pipeline stage: take a batch of pending work from the database, do it, record it.

Every `step()` handles one batch and returns how many items it recorded (0: nothing pending now).
The database is the only state between steps: a stage object keeps caches (seen hashes, the
near-duplicate index) that it can rebuild from the database at any time, and a process killed at
any moment loses at most the batch in flight. Requests carry seeds derived from the run seed and the
item's identity (generator/seeds.py), so the batch a restarted run redoes asks the same questions.

Stages are independent of how they are scheduled (one after the other, or concurrently in threads by
generator/pipeline.py) and of where backends and sandboxes run (in process, or Ray pools).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.engine import Engine

from db import queries
from db.records import (
    ExecutionJob,
    LLMCallRecord,
    NewProblem,
    SolutionSample,
    SolutionsOutcome,
    TestsOutcome,
    problem_call_key,
)
from executor.jobs import Job, Result
from generator.backends.base import Backend, BackendError, Completion, GenerationRequest
from generator.config import PipelineConfig
from generator.decontam import Decontaminator
from generator.normalize import problem_hash
from generator.parsers import parse_problems, parse_solution, parse_tests
from generator.prompts import SOLUTIONS_STOP, TESTS_STOP, problems_prompt, solutions_prompt, tests_prompt
from generator.seeds import derive_seed, shown_test_index

if TYPE_CHECKING:
    from generator.dedup import NearDeduplicator

BATCHES_IN_SANDBOX = 2  # batches handed to the sandbox at once (it is thread-safe)
SELECT_EVERY_S = 5.0  # how often the execution stage selects triples while it runs
SANDBOX_RETRIES = 2  # a job whose sandbox failed (not the solution) runs again this often before it is recorded


class SandboxLike(Protocol):
    image_digest: str | None

    def run(self, jobs: list[Job]) -> list[Result]: ...


def storable(text: str) -> str:
    """Text every database accepts: lone surrogates and NUL (PostgreSQL refuses it) become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _call_record(
    model: str, request: GenerationRequest, completion: Completion, *, item_key: str = "", sample_index: int = 0
) -> LLMCallRecord:
    safe = completion.model_copy(update={"text": storable(completion.text)})
    return LLMCallRecord.from_completion(model, request, safe, item_key=item_key, sample_index=sample_index)


def _generate(backend: Backend, requests: list[GenerationRequest], stage: str) -> list[list[Completion]]:
    """`backend.generate` with its contract checked: one list of n completions per request."""
    results = backend.generate(requests)
    if len(results) != len(requests):
        raise BackendError(f"{stage}: the backend answered {len(results)} of {len(requests)} requests")
    for request, completions in zip(requests, results, strict=True):
        if len(completions) != request.n:
            raise BackendError(f"{stage}: the backend returned {len(completions)} samples where {request.n} were asked")
    return results


@dataclass
class StageContext:
    engine: Engine
    run_id: int
    cfg: PipelineConfig


class ProblemsStage:
    """Problem-writing calls, in call-index order, until `target` accepted problems or `max_calls` calls.

    Call i has item key "call-i" and a seed derived from i. Its questions are parsed, then in order:
    exact duplicates are left to the database's unique hash (it counts them), contaminated ones and
    near-duplicates are stored with their reason, the rest are accepted. The call that reaches the
    target is kept whole; calls after it, even if already generated in the same batch, are not recorded,
    so the set of recorded calls does not depend on the batch size or on where a run was interrupted.
    """

    name = "problems"

    def __init__(self, ctx: StageContext, backend: Callable[[], Backend]) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg.problems
        self._backend = backend
        self._decontam: Decontaminator | None = None
        self._load()

    def _load(self) -> None:
        """(Re)build the caches from the database: what is done, seen, and accepted."""
        engine, run_id = self.ctx.engine, self.ctx.run_id
        self.done = {int(key.split("-", 1)[1]) for key in queries.problem_calls_done(engine, run_id)}
        stored = queries.existing_problem_texts(engine, run_id, ("accepted", "near_duplicate", "contaminated"))
        self.seen = {problem_hash(text) for _, text in stored}
        self.accepted = queries.count_problems(engine, run_id, "accepted")
        self.near: NearDeduplicator | None = None
        if self.cfg.near_dup.enabled:
            from generator.dedup import NearDeduplicator  # datasketch imports scipy: only when asked for

            near = self.cfg.near_dup
            self.near = NearDeduplicator(near.threshold, num_perm=near.num_perm, shingle=near.shingle)
            for _, text in queries.existing_problem_texts(engine, run_id, ("accepted",)):
                self.near.add(text)

    @property
    def decontam(self) -> Decontaminator | None:
        settings = self.cfg.decontam
        if self._decontam is None and (settings.humaneval or settings.files):
            self._decontam = Decontaminator.from_sources(settings.humaneval, settings.files, n=settings.ngram)
        return self._decontam

    def finished(self) -> bool:
        return self.accepted >= self.cfg.target or len(self.done) >= self.cfg.max_calls

    def _next_calls(self) -> list[int]:
        remaining = self.cfg.target - self.accepted
        per_call = self.accepted / len(self.done) if self.done and self.accepted else float(self.cfg.per_call)
        wanted = max(1, math.ceil(remaining / max(per_call, 1.0)))
        size = min(self.cfg.batch_size, wanted)
        return [i for i in range(self.cfg.max_calls) if i not in self.done][:size]

    def request(self, call_index: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=problems_prompt(self.cfg.per_call),
            n=1,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
            seed=derive_seed(self.ctx.cfg.seed, "problems", call_index),
        )

    def judge(self, text: str) -> NewProblem:
        """The verdict on one parsed question (and the caches updated as if it were stored).

        An exact duplicate is passed on as it is: the database's unique hash drops it and counts it.
        """
        key = problem_hash(text)
        if key in self.seen:
            return NewProblem(text=text, norm_hash=key)
        self.seen.add(key)
        if self.decontam is not None and (overlap := self.decontam.check(text)) is not None:
            return NewProblem(text=text, norm_hash=key, status="contaminated", reason=overlap)
        if self.near is not None and (original := self.near.add(text)) is not None:
            return NewProblem(
                text=text, norm_hash=key, status="near_duplicate", reason=f"near duplicate of: {original[:200]}"
            )
        self.accepted += 1
        return NewProblem(text=text, norm_hash=key)

    def step(self) -> int:
        if self.finished():
            return 0
        indices = self._next_calls()
        if not indices:
            return 0
        requests = [self.request(i) for i in indices]
        backend = self._backend()
        results = _generate(backend, requests, self.name)
        recorded = 0
        for index, request, (completion,) in zip(indices, requests, results, strict=True):
            if self.finished():
                break
            parsed = parse_problems(completion.text, completion.finish_reason, min_chars=self.cfg.min_chars)
            seen_before = len(self.seen)
            problems = [self.judge(text) for text in parsed.problems]
            expected_new = len(self.seen) - seen_before
            call = _call_record(backend.model_name, request, completion, item_key=problem_call_key(index))
            stats = queries.record_problem_call(self.ctx.engine, self.ctx.run_id, call, problems)
            self.done.add(index)
            recorded += 1
            if stats.already_recorded or stats.inserted != expected_new:
                self._load()  # another process wrote this run meanwhile: take the database's word for it
        return recorded


class TestsStage:
    """One tests call per accepted problem (the paper's one-shot prompt); the shown test is drawn here."""

    __test__ = False  # not a pytest test class
    name = "tests"

    def __init__(self, ctx: StageContext, backend: Callable[[], Backend]) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg.tests
        self._backend = backend

    def step(self) -> int:
        pending = queries.pending_tests(self.ctx.engine, self.ctx.run_id, self.cfg.batch_size)
        if not pending:
            return 0
        identities = [problem_hash(problem.text) for problem in pending]
        requests = [
            GenerationRequest(
                prompt=tests_prompt(problem.text, self.cfg.count),
                n=1,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_tokens,
                stop=list(TESTS_STOP),
                seed=derive_seed(self.ctx.cfg.seed, "tests", identity),
            )
            for problem, identity in zip(pending, identities, strict=True)
        ]
        backend = self._backend()
        results = _generate(backend, requests, self.name)
        outcomes = []
        for problem, identity, request, (completion,) in zip(pending, identities, requests, results, strict=True):
            parsed = parse_tests(completion.text, completion.finish_reason)
            call = _call_record(backend.model_name, request, completion)
            if parsed.tests:
                shown = shown_test_index(self.ctx.cfg.seed, identity, len(parsed.tests))
                outcomes.append(TestsOutcome(problem_id=problem.id, call=call, tests=parsed.tests, shown_index=shown))
            else:
                outcomes.append(TestsOutcome(problem_id=problem.id, call=call, failure=parsed.failures[-1].reason))
        queries.record_tests(self.ctx.engine, self.ctx.run_id, outcomes)
        return len(outcomes)


class SolutionsStage:
    """n sampled solutions per problem with tests, each prompt showing the problem's recorded shown test."""

    name = "solutions"

    def __init__(self, ctx: StageContext, backend: Callable[[], Backend]) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg.solutions
        self._backend = backend

    def step(self) -> int:
        pending = queries.pending_solutions(self.ctx.engine, self.ctx.run_id, self.cfg.batch_size)
        if not pending:
            return 0
        requests = [
            GenerationRequest(
                prompt=solutions_prompt(problem.text, problem.shown_test.code),
                n=self.cfg.n,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_tokens,
                stop=list(SOLUTIONS_STOP),
                seed=derive_seed(self.ctx.cfg.seed, "solutions", problem_hash(problem.text)),
            )
            for problem in pending
        ]
        backend = self._backend()
        results = _generate(backend, requests, self.name)
        outcomes = []
        for problem, request, completions in zip(pending, requests, results, strict=True):
            samples = []
            for index, completion in enumerate(completions):
                parsed = parse_solution(completion.text, completion.finish_reason)
                samples.append(
                    SolutionSample(
                        call=_call_record(backend.model_name, request, completion, sample_index=index),
                        code=parsed.code,
                        parse_status="ok" if parsed.ok else parsed.failure.reason,  # type: ignore[union-attr]
                        parse_error=None if parsed.ok else storable(parsed.failure.detail) or None,  # type: ignore[union-attr]
                    )
                )
            outcomes.append(
                SolutionsOutcome(problem_id=problem.id, shown_test_id=problem.shown_test.id, samples=samples)
            )
        queries.record_solutions(self.ctx.engine, self.ctx.run_id, outcomes)
        return len(outcomes)


class ExecutionsStage:
    """Every parsed solution against every test of its problem in the sandbox, then selection.

    Batches are walked by solution id (a cursor). Two batches are in the sandbox at once, so its
    workers never wait at a batch boundary for the slowest job of a batch, and each batch's results
    are written by a recorder thread while the sandbox runs the next ones: the database never idles
    the sandbox. A result the sandbox itself failed (`sandbox_error`) is retried before it is recorded
    as final. When the cursor finds nothing and nothing is in flight, the stage sweeps the queue from
    the start once more (solutions a concurrent writer committed out of id order, and the retries).
    """

    name = "executions"

    def __init__(self, ctx: StageContext, sandbox: Callable[[], SandboxLike]) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg.execution
        self._sandbox = sandbox
        self._cursor = 0
        self._attempts: dict[int, int] = {}
        self._runner = ThreadPoolExecutor(max_workers=BATCHES_IN_SANDBOX, thread_name_prefix="run-executions")
        self._running: deque[tuple[list[ExecutionJob], Future[list[Result]]]] = deque()
        self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record-executions")
        self._in_flight: Future[int] | None = None
        self._selected_at = float("-inf")
        self.executed = 0  # results recorded by this process
        self.started_at: float | None = None  # first batch handed to the sandbox (time.monotonic)
        self.recorded_at: float | None = None  # last batch recorded

    @property
    def busy_s(self) -> float:
        if self.started_at is None or self.recorded_at is None:
            return 0.0
        return self.recorded_at - self.started_at

    def _record(self, items: list[tuple[int, Result]]) -> int:
        written = queries.record_executions(self.ctx.engine, items) if items else 0
        # Selection scans the run's problems: often enough for live triple counts, not every batch
        # (the driver selects once more at the end).
        if time.monotonic() - self._selected_at >= SELECT_EVERY_S:
            queries.select_triples(self.ctx.engine, self.ctx.run_id, self.ctx.cfg.selection, self.ctx.cfg.seed)
            self._selected_at = time.monotonic()
        self.recorded_at = time.monotonic()
        return written

    def _wait_recorder(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            self.executed += future.result()  # re-raises a failed write here, in the stage's thread

    def _collect_oldest(self) -> int:
        """Wait for the oldest batch in the sandbox and hand its results to the recorder."""
        pending, future = self._running.popleft()
        by_id = {result.id: result for result in future.result()}
        digest = self._sandbox().image_digest
        runtime = getattr(self._sandbox(), "runtime", None)
        items: list[tuple[int, Result]] = []
        for item in pending:
            result = by_id.get(str(item.solution_id))
            if result is None:
                raise RuntimeError(f"the sandbox returned no result for job {item.solution_id}")
            if result.outcome == "sandbox_error" and self._attempts.get(item.solution_id, 0) < SANDBOX_RETRIES:
                self._attempts[item.solution_id] = self._attempts.get(item.solution_id, 0) + 1
                continue  # not recorded: the sweep runs it again
            if result.image_digest is None and digest is not None:
                result = result.model_copy(update={"image_digest": digest})
            if result.runtime is None and runtime is not None:
                result = result.model_copy(update={"runtime": runtime})
            items.append((item.solution_id, result))
        self._wait_recorder()
        self._in_flight = self._recorder.submit(self._record, items)
        return len(pending)

    def step(self) -> int:
        pending = queries.pending_executions(
            self.ctx.engine, self.ctx.run_id, self.cfg.batch_size, after_solution_id=self._cursor
        )
        if not pending:
            if self._running:
                return self._collect_oldest()
            self._wait_recorder()
            if self._cursor == 0:
                return 0
            self._cursor = 0  # sweep from the start: retries, and rows committed out of id order
            return self.step()
        self._cursor = pending[-1].solution_id
        sandbox = self._sandbox()
        if self.started_at is None:
            self.started_at = time.monotonic()
        jobs = [item.job(imports=self.cfg.imports) for item in pending]
        self._running.append((pending, self._runner.submit(sandbox.run, jobs)))
        if len(self._running) >= BATCHES_IN_SANDBOX:
            self._collect_oldest()
        return len(pending)

    def close(self) -> None:
        """Record the batches still in the sandbox (a stopping run keeps their results), then stop."""
        try:
            while self._running:
                self._collect_oldest()
            self._wait_recorder()
        finally:
            self._runner.shutdown(wait=True, cancel_futures=True)
            self._recorder.shutdown(wait=True)
