"""A scripted LLM backend (test code): answers the paper's three prompts from a fixed catalog.

It reads the prompt the pipeline sends, as a real model would: which of the three prompts it is, and
for tests and solutions the problem (and the shown test) after the one-shot example. The catalog holds
problems with known good and bad tests and solutions, including the cheats a sandbox must not pass
(early exit, always-equal objects) and a solution that overfits the one test it was shown. Nothing in
it knows what the pipeline will decide: `EXPECTED_TRIPLES` is worked out by hand from the recipe.

Selected in a configuration as a plugin backend:
    backend: {kind: plugin, factory: tests.generator.scripted_backend:ScriptedBackend, options: {...}}
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from generator.backends.base import BackendError, Completion, GenerationRequest

CORRECT_ADD = "def add_numbers(a, b):\n    return a + b\n"
CORRECT_REVERSE = "def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))\n"
CORRECT_SQUARES = "def sum_of_squares(n):\n    return sum(i * i for i in range(1, n + 1))\n"
CORRECT_VOWELS = "def count_vowels(text):\n    return sum(1 for c in text.lower() if c in 'aeiou')\n"


def _python(code: str) -> str:
    return f"\n[PYTHON]\n{code}[/PYTHON]\n"


def _tests(*asserts: str, closed: bool = False) -> str:
    body = "".join(f"# Test case {i}:\n{a}\n" for i, a in enumerate(asserts, start=1))
    return f"\n[TESTS]\n{body}" + ("[/TESTS]\n" if closed else "")  # servers strip the stop string


@dataclass
class ScriptedProblem:
    text: str
    tests: str  # the tests completion
    solutions: list[str] = field(default_factory=list)  # sample completions, in sample order (padded)


OVERFIT = "OVERFIT"  # solutions marker: answer only the shown test (built from the prompt)

CATALOG: list[ScriptedProblem] = [
    ScriptedProblem(
        "Write a function add_numbers(a, b) that returns the sum of two integers.",
        _tests(
            "assert add_numbers(1, 2) == 3",
            "assert add_numbers(-1, 1) == 0",
            "assert add_numbers(0, 0) == 0",
            "assert True",
            "assert add_numbers(2, 2) == 4\nprint('x')",
        ),
        [
            _python("def add_numbers(a, b):\n    return a - b\n"),  # wrong
            _python("import sys\ndef add_numbers(a, b):\n    return a * b\nsys.exit(0)\n"),  # early exit cheat
            _python(CORRECT_ADD),  # the first passing sample: the triple
            _python("def add_numbers(a, b):\n    return b + a\n"),  # also passes, later
        ],
    ),
    ScriptedProblem(
        "Write a function reverse_words(sentence) that reverses the order of the words in a sentence.",
        _tests(
            "assert reverse_words('a b c') == 'c b a'",
            "assert reverse_words('hello') == 'hello'",
            "assert reverse_words('one two') == 'two one'",
            closed=True,
        ),
        [
            _python(
                "class Anything:\n    def __eq__(self, other):\n        return True\n"
                "def reverse_words(sentence):\n    return Anything()\n"
            ),  # always-equal cheat
            _python("import os\ndef reverse_words(sentence):\n    os._exit(0)\n"),  # early exit in the call
            "Sure! Here is the function:\ndef reverse_words(s): return s[::-1]",  # no tags
            _python("def reverse_words(sentence)\n    return sentence\n"),  # syntax error
            _python("def reverse_words(sentence):\n    raise SystemExit(0)\n"),  # SystemExit
            _python(CORRECT_REVERSE),  # the triple
        ],
    ),
    ScriptedProblem(
        "Write a function sum_of_squares(n) that returns the sum of the squares of 1 to n.",
        _tests("assert sum_of_squares(1) == 1", "assert sum_of_squares(2) == 5", "assert sum_of_squares(3) == 14"),
        [OVERFIT, _python("def sum_of_squares(n):\n    while True:\n        pass\n"), _python(CORRECT_SQUARES)],
    ),
    ScriptedProblem(
        "Write a function count_vowels(text) that counts the vowels in a string.",
        _tests(
            "assert count_vowels('hello') == 2", "assert count_vowels('xyz') == 0", "assert count_vowels('AEIOU') == 5"
        ),
        [
            _python("def count_vowels(text):\n    return len(text)\n"),
            _python("def count_vowels(text):\n    return sum(c in 'aeiou' for c in text)\n"),  # misses upper case
            # every other sample is wrong too: no triple for this problem
        ],
    ),
    ScriptedProblem(  # the tests call yields no usable asserts: tests fail, no solutions asked
        "Write a function is_leap_year(year) that tells whether a year is a leap year.",
        "I think the tests should check years divisible by 4, 100 and 400.",
    ),
]

# The HumanEval/0 docstring, reworded only in case and punctuation: decontamination must drop it.
CONTAMINATED = "Check if in given list of numbers, are any two numbers closer to each other than given threshold."

# What the recipe must keep: (problem, solution code), the first passing sample of each problem.
EXPECTED_TRIPLES = {
    (CATALOG[0].text, CORRECT_ADD),
    (CATALOG[1].text, CORRECT_REVERSE),
    (CATALOG[2].text, CORRECT_SQUARES),
}
EXPECTED_SAMPLE_INDEX = {CATALOG[0].text: 2, CATALOG[1].text: 5, CATALOG[2].text: 2}

_PROBLEM = re.compile(r"\[INST\] Problem: (.*?)\n(?:Test: (.*?)\n)?\[/INST\]\Z", re.DOTALL)
_WRONG = _python("def solution(*args):\n    return None\n")


def problems_completion(per_call: int) -> str:
    """A Llama 2 style answer: chatter, headings, the catalog, a case-only duplicate, a contaminated one."""
    lines = ["  Sure! Here are some programming interview questions:", "", "Easy:", ""]
    items = [p.text for p in CATALOG] + [CATALOG[0].text.upper(), CONTAMINATED]
    lines += [f"{i}. {text}" for i, text in enumerate(items[:per_call], start=1)]
    lines += ["", "I hope these help with your interview preparation!"]
    return "\n".join(lines)


class ScriptedBackend:
    """Answers the three prompts from `CATALOG`; `fail_stage` makes every call of that stage fail."""

    def __init__(self, model_name: str = "scripted", delay_s: float = 0.0, fail_stage: str | None = None) -> None:
        self.model_name = model_name
        self.delay_s = delay_s
        self.fail_stage = fail_stage
        self.calls: dict[str, int] = {"problems": 0, "tests": 0, "solutions": 0}
        self._by_text = {p.text: p for p in CATALOG}

    def _stage(self, prompt: str) -> str:
        if "programming interview questions" in prompt and "Problem:" not in prompt:
            return "problems"
        if "Your task is to write" in prompt and "tests to check the correctness" in prompt:
            return "tests"
        if "Your task is to write a Python function to solve" in prompt:
            return "solutions"
        raise BackendError(f"scripted backend: unknown prompt {prompt[:60]!r}")

    def _answer(self, request: GenerationRequest) -> list[str]:
        stage = self._stage(request.prompt)
        self.calls[stage] += 1
        if stage == self.fail_stage:
            raise BackendError(f"scripted backend: {stage} server returned HTTP 503 after 5 retries")
        if stage == "problems":
            per_call = int(re.search(r"Write (\d+) programming", request.prompt).group(1))  # type: ignore[union-attr]
            return [problems_completion(per_call)] * request.n
        match = _PROBLEM.search(request.prompt)
        if match is None:
            raise BackendError("scripted backend: no problem in the prompt")
        problem = self._by_text.get(match.group(1))
        if problem is None:
            raise BackendError(f"scripted backend: unknown problem {match.group(1)!r}")
        if stage == "tests":
            return [problem.tests] * request.n
        shown = match.group(2)
        answers = []
        for index in range(request.n):
            answer = problem.solutions[index] if index < len(problem.solutions) else _WRONG
            if answer == OVERFIT:  # pass the shown test by returning its expected value, nothing else
                call, expected = shown.removeprefix("assert ").split(" == ")
                name = call.split("(", 1)[0]
                answer = _python(f"def {name}(*args):\n    return {expected}\n")
            answers.append(answer)
        return answers

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return [
            [
                Completion(
                    text=text,
                    finish_reason="stop",
                    prompt_tokens=len(request.prompt.split()),
                    completion_tokens=len(text.split()),
                    latency_s=self.delay_s,
                )
                for text in self._answer(request)
            ]
            for request in requests
        ]

    def close(self) -> None:
        pass
