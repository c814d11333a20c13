"""Fuzz: >= 10,000 malformed completions through every parser; none may raise, every failure has a reason."""

from __future__ import annotations

import ast
import random
from collections import Counter

import pytest

from generator.parsers import (
    FAILURE_REASONS,
    MAX_COMPLETION_CHARS,
    ParseFailure,
    parse_problems,
    parse_solution,
    parse_tests,
)

PROBLEMS = "Here are some questions:\n\n" + "\n".join(
    f"{i}. Write a function that computes property number {i} of a list of integers." for i in range(1, 11)
)
TESTS = "\n[TESTS]\n" + "\n".join(f"# Test case {i}:\nassert solve([{i}, {i + 1}]) == {2 * i + 1}" for i in range(1, 6))
SOLUTION = "\n[PYTHON]\ndef solve(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n"
BASES = [PROBLEMS, TESTS + "\n[/TESTS]", TESTS, SOLUTION + "[/PYTHON]", SOLUTION]
JUNK = "()[]{}:=+-*/#'\"\\\n\t abcxyz019_.,;@!?<>|&^%$~`" + "λ漢字🙂\u200b\ufeff"
CASES = 10_500


def _truncate(rng: random.Random, text: str) -> tuple[str, str]:
    return text[: rng.randrange(len(text))], "length"


def _strip_tags(rng: random.Random, text: str) -> tuple[str, str]:
    for tag in ("[TESTS]", "[/TESTS]", "[PYTHON]", "[/PYTHON]"):
        text = text.replace(tag, rng.choice(["", "[TEST]", "[python]", "TESTS"]))
    return text, "stop"


def _break_code(rng: random.Random, text: str) -> tuple[str, str]:
    chars = list(text)
    for _ in range(rng.randint(1, 8)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(JUNK))
    return "".join(chars), rng.choice(["stop", "length"])


def _garbage(rng: random.Random, _text: str) -> tuple[str, str]:
    return "".join(rng.choice(JUNK) for _ in range(rng.randint(0, 400))), "stop"


def _nested(rng: random.Random, text: str) -> tuple[str, str]:
    depth = rng.choice([50, 200, 1000, 5000])
    opener = rng.choice(["(", "[", "{", "-", "not ", "lambda: "])
    return text.replace("total = 0", "total = " + opener * depth + "0").replace("== ", "== " + opener * depth), "stop"


def _repeat_tags(rng: random.Random, text: str) -> tuple[str, str]:
    tag = rng.choice(["[TESTS]", "[/TESTS]", "[PYTHON]", "[/PYTHON]", "[INST]", "[/INST]"])
    position = rng.randrange(len(text) + 1)
    return text[:position] + tag * rng.randint(1, 3) + text[position:], "stop"


def _control(rng: random.Random, text: str) -> tuple[str, str]:
    position = rng.randrange(len(text) + 1)
    return text[:position] + rng.choice(["\x00", "\ud800", "\udfff", "\x00\x00"]) + text[position:], "stop"


def _duplicate_lines(rng: random.Random, text: str) -> tuple[str, str]:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(lines))
        lines.insert(position, lines[position])
    return "\n".join(lines), "stop"


MUTATIONS = [_duplicate_lines, _truncate, _strip_tags, _break_code, _garbage, _nested, _repeat_tags, _control]


def _cases(rng: random.Random):
    """(completion, finish_reason, expected reason or None) triples; bytes for the non-UTF-8 ones."""
    for index in range(CASES):
        base = rng.choice(BASES)
        kind = index % 10
        if kind == 0:  # non-UTF-8 bytes: a real completion with invalid bytes spliced in
            raw = base.encode("utf-8")
            position = rng.randrange(len(raw) + 1)
            yield (
                raw[:position] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE, 0xED])]) + b"\xff" + raw[position:],
                "stop",
                "not_utf8",
            )
        elif kind == 1 and index % 50 == 1:  # huge output, past the limit
            yield base * (MAX_COMPLETION_CHARS // len(base) + 2), "length", "too_long"
        elif kind == 1:  # large but allowed: a model that repeats itself until the token limit
            yield base + rng.choice(JUNK) * rng.randint(1_000, 20_000), "length", None
        elif kind == 2:
            yield rng.choice(JUNK) * rng.randint(0, 3), "stop", None  # nearly empty
        else:
            text, finish = rng.choice(MUTATIONS)(rng, base)
            for _ in range(rng.randint(0, 2)):  # sometimes compose mutations
                text, finish = rng.choice(MUTATIONS)(rng, text or base)
            yield text, finish, None


def _check_failures(failures: list[ParseFailure]) -> None:
    for failure in failures:
        assert failure.reason in FAILURE_REASONS
        assert len(failure.detail) <= 160


@pytest.mark.timeout(300)
def test_fuzzed_completions_never_crash_and_every_failure_has_a_reason():
    rng = random.Random(20230824)
    reasons: Counter[str] = Counter()
    total = 0
    for raw, finish_reason, expected in _cases(rng):
        total += 1
        problems = parse_problems(raw, finish_reason=finish_reason)
        tests = parse_tests(raw, finish_reason=finish_reason)
        solution = parse_solution(raw, finish_reason=finish_reason)

        _check_failures(problems.failures)
        assert problems.problems or problems.failures, "a completion with no problems must say why"
        for problem in problems.problems:
            assert problem and problem == " ".join(problem.split())

        _check_failures(tests.failures)
        assert tests.tests or tests.failures, "a completion with no tests must say why"
        for test in tests.tests:
            (statement,) = ast.parse(test).body
            assert isinstance(statement, ast.Assert)

        assert (solution.code is None) != (solution.failure is None)
        if solution.failure is not None:
            _check_failures([solution.failure])
        else:
            compile(solution.code, "<solution>", "exec")  # what the sandbox will do with it

        if expected is not None:
            assert [f.reason for f in problems.failures] == [expected]
            assert [f.reason for f in tests.failures] == [expected]
            assert solution.failure is not None and solution.failure.reason == expected
        reasons.update(f.reason for f in problems.failures + tests.failures)
        reasons.update([solution.failure.reason] if solution.failure else [])

    assert total >= 10_000
    # The fuzzer reached every way a completion can fail that it is built to produce.
    for reason in (
        "not_utf8",
        "nul_byte",
        "too_long",
        "empty",
        "no_list",
        "truncated",
        "missing_tag",
        "syntax_error",
        "not_assert",
        "duplicate",
        "no_tests",
        "no_function",
    ):
        assert reasons[reason] > 0, (reason, reasons)
