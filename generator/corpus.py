"""The recipe corpus: interview-style Python problems written for this project, each with 5 asserts and a
reference solution that passes them (verified in the sandbox by tests/quickstart/test_recipe_corpus.py).

Why it exists: no model weights can be downloaded on the project's machines, so the quickstart's demo
model learns the recipe's three formats (problem lists, `[TESTS]` blocks, `[PYTHON]` answers) from this
corpus (finetune/recipe_warmup.py), and a randomly initialised model would otherwise write nothing the
parsers accept. It also serves as an evaluation benchmark: the `heldout` split (fixed in the file) is
never used for training, and the run report counts how many generated problems are new to the corpus.

One JSON object per line: id, problem, entry_point, tests (>= 5 single-line asserts calling the entry
point), solution, split ("train" or "heldout"), difficulty ("easy" or "medium"), topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from generator.normalize import problem_hash
from selfinstruct.errors import UserError

CORPUS_FILE = Path(__file__).resolve().parent / "data" / "recipe_corpus.jsonl"
MIN_TESTS = 5

Split = Literal["train", "heldout"]


class CorpusProblem(BaseModel):
    """One problem of the recipe corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    problem: str = Field(min_length=12)
    entry_point: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tests: list[str]
    solution: str = Field(min_length=1)
    split: Split
    difficulty: Literal["easy", "medium"]
    topic: str


def load_corpus(path: str | Path | None = None, split: Split | None = None) -> list[CorpusProblem]:
    """The corpus's problems in file order (only `split`'s when given). A missing or corrupt file, a row
    without enough tests or a repeated id is a `UserError` naming the file and line."""
    path = Path(path) if path is not None else CORPUS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"recipe corpus not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe corpus {path} cannot be read: {exc}") from None
    problems: list[CorpusProblem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: recipe corpus row is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: recipe corpus row must be a JSON object, got {type(row).__name__}")
        try:
            problem = CorpusProblem.model_validate(row)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "row"
            raise UserError(f"{where}: bad recipe corpus row ({field}: {err['msg']})") from None
        if len(problem.tests) < MIN_TESTS:
            raise UserError(f"{where}: recipe corpus problem {problem.id!r} has {len(problem.tests)} tests; "
                            f"every problem needs at least {MIN_TESTS} asserts")
        if problem.id in seen:
            raise UserError(f"{where}: recipe corpus id {problem.id!r} repeats line {seen[problem.id]}")
        seen[problem.id] = number
        problems.append(problem)
    if not problems:
        raise UserError(f"recipe corpus {path} holds no problems")
    return [p for p in problems if split is None or p.split == split]


def corpus_hashes(problems: Iterable[CorpusProblem]) -> set[str]:
    """The pipeline's dedup key (generator/normalize.py) of every problem: a generated problem whose hash
    is in this set is one the model recalled from the corpus, not a new one."""
    return {problem_hash(p.problem) for p in problems}
