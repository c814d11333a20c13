"""Records that cross the boundary between the pipeline and the database (pydantic v2).

The pipeline builds the `*Outcome` / `New*` records from LLM output and hands them to the stage
queries in db/queries.py; the queries hand pending work back as `ProblemRow`, `ProblemWithTests` and
`ExecutionJob`. Nothing here touches the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from executor.jobs import Job

if TYPE_CHECKING:  # the db package does not import the LLM backends (and their dependencies)
    from generator.backends.base import Completion, GenerationRequest

ProblemStatus = Literal["accepted", "near_duplicate", "contaminated"]
SelectionRule = Literal["first", "random"]


def text_hash(normalized_text: str) -> str:
    """sha256 hex digest of a problem's normalized text: the exact-duplicate key (unique per run)."""
    return hashlib.sha256(normalized_text.encode("utf-8")).hexdigest()


def tests_json(tests: Sequence[str]) -> str:
    """A problem's tests as the JSON array of strings an export row carries (`problems.tests_json`).

    The bytes pydantic-core writes for the list: the stdlib's C string encoder escapes exactly the
    characters it does (", \\, control characters; other text as is), which the export tests pin.
    """
    return "[" + ",".join(map(encode_basestring, tests)) + "]"


def problem_key(problem_id: int) -> str:
    """The `LLMCall.item_key` of the tests and solutions calls made for a problem."""
    return f"problem-{problem_id}"


def problem_call_key(call_index: int) -> str:
    """The `LLMCall.item_key` of the `call_index`-th problem-writing call of a run."""
    return f"call-{call_index}"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LLMCallRecord(_Record):
    """One sampled completion and everything that decided it (what `LLMCall` stores).

    `item_key` identifies the call within its stage; the tests/solutions queries fill it from the
    problem id (`problem_key`), so the pipeline only sets it for problem-writing calls.
    """

    item_key: str = ""
    sample_index: int = Field(default=0, ge=0)
    model: str
    prompt: str
    completion: str
    params: dict[str, Any] = Field(default_factory=dict, description="temperature, top_p, max_tokens, stop, n")
    seed: int | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    latency_s: float = Field(default=0.0, ge=0.0)
    finish_reason: str = "stop"

    @classmethod
    def from_completion(
        cls,
        model: str,
        request: GenerationRequest,
        completion: Completion,
        *,
        item_key: str = "",
        sample_index: int = 0,
    ) -> LLMCallRecord:
        """The record of the `sample_index`-th completion a backend returned for `request`."""
        return cls(
            item_key=item_key,
            sample_index=sample_index,
            model=model,
            prompt=request.prompt,
            completion=completion.text,
            params=request.model_dump(include={"temperature", "top_p", "max_tokens", "stop", "n"}),
            seed=request.seed,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=completion.latency_s,
            finish_reason=completion.finish_reason,
        )


class NewProblem(_Record):
    """A question parsed from a problem-writing call, with the dedup/decontamination verdict."""

    text: str = Field(min_length=1)
    norm_hash: str = Field(min_length=1, max_length=64, description="text_hash(normalized text)")
    status: ProblemStatus = "accepted"
    reason: str | None = Field(default=None, description="why it is not accepted, e.g. 'HumanEval/17: 13-gram overlap'")


class ProblemCallStats(_Record):
    """What recording one problem-writing call did."""

    call_id: int | None
    already_recorded: bool = Field(description="the call was recorded before (a rerun): nothing was written")
    parsed: int
    inserted: int
    duplicates: int = Field(description="exact duplicates (same norm_hash) of problems already in the run")


class ProblemRow(_Record):
    """An accepted problem waiting for its tests."""

    id: int
    text: str


class TestsOutcome(_Record):
    """The tests call for one problem: the parsed asserts and which one is shown to the solver, or the
    reason the call yielded no usable tests (then `tests` is empty and the problem is marked failed)."""

    __test__ = False  # not a pytest test class

    problem_id: int
    call: LLMCallRecord
    tests: list[str] = Field(default_factory=list)
    shown_index: int | None = None
    failure: str | None = Field(default=None, description="e.g. 'no_tests_tags', 'no_valid_asserts'")

    @model_validator(mode="after")
    def _consistent(self) -> TestsOutcome:
        if self.failure is None:
            if not self.tests:
                raise ValueError("a successful TestsOutcome needs at least one test (or set failure)")
            if self.shown_index is None or not 0 <= self.shown_index < len(self.tests):
                raise ValueError(f"shown_index {self.shown_index} is not an index of the {len(self.tests)} tests")
        return self


class TestRow(_Record):
    __test__ = False  # not a pytest test class

    id: int
    index: int
    code: str
    shown: bool


class ProblemWithTests(_Record):
    """A problem whose tests are in and whose solutions are pending, with the test to show."""

    id: int
    text: str
    tests: list[TestRow]
    shown_test: TestRow


class SolutionSample(_Record):
    """One of the n sampled solutions: its call and what the parser made of it."""

    call: LLMCallRecord
    code: str | None
    parse_status: str = Field(description="'ok' or the failure: 'no_tags', 'syntax_error', 'empty', 'too_long', ...")
    parse_error: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SolutionSample:
        if (self.parse_status == "ok") != (self.code is not None):
            raise ValueError("code must be set exactly when parse_status is 'ok'")
        return self


class SolutionsOutcome(_Record):
    """The n samples for one problem (sample_index = position), or why the stage failed for it."""

    problem_id: int
    shown_test_id: int | None
    samples: list[SolutionSample] = Field(default_factory=list)
    failure: str | None = None


class ExecutionJob(_Record):
    """A parsed solution that has not run yet, with every test of its problem."""

    solution_id: int
    problem_id: int
    code: str
    tests: list[str]

    def job(self, imports: str = "", timeout_s: float | None = None) -> Job:
        """The sandbox job; its id is the solution id, so a `Result` maps straight back."""
        return Job(id=str(self.solution_id), solution=self.code, tests=self.tests, imports=imports, timeout_s=timeout_s)
