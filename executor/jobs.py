"""The records that cross the sandbox boundary: a job in, a result out.

These are the contract between the sandbox and its callers (the pipeline, `selfinstruct sandbox run`,
Ray sandbox actors). The JSON form of `Job` and `Result` is the CLI's JSONL line format.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Outcome = Literal["passed", "failed", "error", "timeout", "memory", "output_limit", "sandbox_error"]
OUTCOMES: tuple[str, ...] = ("passed", "failed", "error", "timeout", "memory", "output_limit", "sandbox_error")


class Job(BaseModel):
    """A solution and the test statements (usually asserts) to run against it, in one fresh process."""

    id: str
    solution: str
    tests: list[str]
    imports: str = Field(default="", description="code run before the solution, e.g. 'from typing import *'")
    setup: str = Field(
        default="",
        description="code run after the solution and before the tests (not a test "
        "itself), e.g. HumanEval's helper definitions and `candidate = entry_point`",
    )
    timeout_s: float | None = Field(default=None, description="overrides the sandbox's default wall-clock limit")


class TestResult(BaseModel):
    """One test statement's result: passed, or the exception type and message that failed it."""

    __test__ = False  # not a pytest test class

    passed: bool
    error: str | None = None


class Result(BaseModel):
    """What happened to one job. `passed` means the harness ran every test and each one passed."""

    id: str
    outcome: Outcome
    tests: list[TestResult] = Field(default_factory=list)
    duration_ms: float = 0.0
    stdout: str = ""
    stderr: str = ""
    image_digest: str | None = None
    runtime: str | None = Field(default=None, description="the container runtime that ran it: runc or runsc")

    @property
    def tests_passed(self) -> int:
        return sum(t.passed for t in self.tests)
