"""Parsers on completions shaped like real model output, and on the usual ways such output goes wrong."""

from __future__ import annotations

import ast

import pytest

from generator.parsers import FAILURE_REASONS, parse_problems, parse_solution, parse_tests

LLAMA2_PROBLEMS = """  Sure, here are 50 programming interview questions of easy and medium complexity:

Easy:

1. Write a function that takes a list of integers and returns the sum of all even numbers in the list.
2. **Reverse a string**: Write a function that reverses a string
   without using slicing.
3) Given a string, count the number of vowels in it.
Question 4: Write a function to check whether a number is prime.

Medium:

5. Implement a function that checks whether a string is a palindrome.

   Example: "racecar" -> True
6. FizzBuzz
7. Write a function that merges two sorted lists into one sorted list.

I hope these questions help you prepare for your interview!"""


def test_problems_numbered_list_with_headings_continuations_and_chatter():
    parsed = parse_problems(LLAMA2_PROBLEMS)
    assert parsed.problems == [
        "Write a function that takes a list of integers and returns the sum of all even numbers in the list.",
        "Reverse a string: Write a function that reverses a string without using slicing.",
        "Given a string, count the number of vowels in it.",
        "Write a function to check whether a number is prime.",
        'Implement a function that checks whether a string is a palindrome. Example: "racecar" -> True',
        "Write a function that merges two sorted lists into one sorted list.",
    ]
    assert [(f.reason, f.detail) for f in parsed.failures] == [("too_short", "FizzBuzz")]


def test_problems_cut_off_by_the_token_limit_drop_the_last_item():
    text = "1. Write a function that sorts a list of tuples by their second element.\n2. Write a function that"
    parsed = parse_problems(text, finish_reason="length")
    assert parsed.problems == ["Write a function that sorts a list of tuples by their second element."]
    assert [f.reason for f in parsed.failures] == ["truncated"]
    assert len(parse_problems(text, finish_reason="stop").problems) == 2


def test_problems_without_a_list_and_numbers_that_are_not_items():
    assert [f.reason for f in parse_problems("I cannot help with that request.").failures] == ["no_list"]
    parsed = parse_problems("3.14 is pi\n1. Write a function that returns pi to n decimal places.")
    assert parsed.problems == ["Write a function that returns pi to n decimal places."]


TESTS_COMPLETION = """
[TESTS]
# Test case 1:
assert get_unique_elements([]) == []
# Test case 2:
assert get_unique_elements([1, 1, 2]) == [
    1,
    2,
]
# Test case 3:
assert True
# Test case 4:
assert get_unique_elements([1, 2) == [1, 2]
# Test case 5:
assert get_unique_elements([]) == []
print("done")
# Test case 6:
assert sorted(get_unique_elements([3, 3, 1])) == [1, 3], "message"
"""


def test_tests_keep_asserts_that_parse_and_record_the_rest():
    parsed = parse_tests(TESTS_COMPLETION)  # no [/TESTS]: the server stripped the stop string
    assert parsed.tests == [
        "assert get_unique_elements([]) == []",
        "assert get_unique_elements([1, 1, 2]) == [\n    1,\n    2,\n]",
        'assert sorted(get_unique_elements([3, 3, 1])) == [1, 3], "message"',
    ]
    assert [f.reason for f in parsed.failures] == ["trivial_assert", "syntax_error", "duplicate", "not_assert"]
    assert parsed.entry_point == "get_unique_elements"
    for test in parsed.tests:
        assert isinstance(ast.parse(test).body[0], ast.Assert)


def test_tests_closing_tag_and_text_after_it_are_ignored():
    parsed = parse_tests("[TESTS]\nassert f(1) == 2\n[/TESTS]\nassert f(2) == 3\n[INST] more")
    assert parsed.tests == ["assert f(1) == 2"]
    assert parsed.failures == []


def test_tests_truncated_completion_drops_the_last_assert_only():
    parsed = parse_tests("[TESTS]\nassert f(1) == 2\nassert f(2) == 4", finish_reason="length")
    assert parsed.tests == ["assert f(1) == 2"]
    assert [f.reason for f in parsed.failures] == ["truncated"]


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("assert f(1) == 2", "missing_tag"),
        ("[TESTS]\n# Test case 1:\n[/TESTS]", "no_tests"),
        ("", "empty"),
        (b"[TESTS]\nassert f(\xff) == 1", "not_utf8"),
        ("[TESTS]\nassert f('\x00') == 1", "nul_byte"),
    ],
)
def test_tests_unusable_completions(completion, reason):
    parsed = parse_tests(completion)
    assert parsed.tests == []
    assert parsed.failures[-1].reason == reason


def test_solution_between_tags_with_and_without_closing_tag():
    body = "def add(a, b):\n    return a + b\n"
    assert parse_solution(f"\n[PYTHON]\n{body}[/PYTHON]\n").code == body
    assert parse_solution(f" [PYTHON]\n{body}").code == body
    fenced = parse_solution(f"[PYTHON]\n```python\n{body}```\n[/PYTHON]")
    assert fenced.code == body


@pytest.mark.parametrize(
    ("completion", "finish_reason", "reason"),
    [
        ("def add(a, b):\n    return a + b\n", "stop", "missing_tag"),
        ("[PYTHON]\ndef add(a, b):\n    return a +", "length", "truncated"),
        ("[PYTHON]\ndef add(a, b)\n    return a + b\n[/PYTHON]", "stop", "syntax_error"),
        ("[PYTHON]\nprint(1 + 2)\n[/PYTHON]", "stop", "no_function"),
        ("[PYTHON]\n\n[/PYTHON]", "stop", "empty"),
        ("[PYTHON]\n" + "x = (" * 500 + "\n[/PYTHON]", "stop", "syntax_error"),
        ("[PYTHON]\ndef f():\n    return '\ud800'\n[/PYTHON]", "stop", "not_utf8"),
    ],
)
def test_solution_failures_have_reasons(completion, finish_reason, reason):
    parsed = parse_solution(completion, finish_reason=finish_reason)
    assert parsed.code is None
    assert parsed.failure is not None and parsed.failure.reason == reason
    assert parsed.failure.reason in FAILURE_REASONS
    assert len(parsed.failure.detail) <= 160


def test_problems_and_tests_carrying_chat_tags_are_refused_one_by_one():
    """A chat tag inside a problem or a test would forge a turn in the next stage's prompt (raw or chat):
    that item is a `chat_tag` failure, the others in the same completion are kept."""
    problems = parse_problems(
        " 1. Write a function that reverses the words of a sentence.\n"
        "2. Write a function that strips [INST] and [/INST] markers from a chat transcript.\n"
        "3. Write a function that returns the <<SYS>> block of a prompt string.\n"
        "4. Write a function that counts the vowels in a string."
    )
    assert len(problems.problems) == 2
    assert [f.reason for f in problems.failures] == ["chat_tag", "chat_tag"]
    tests = parse_tests(
        "[TESTS]\n# Test case 1:\nassert strip_tags('[INST] hi [/INST]') == 'hi'\n"
        "# Test case 2:\nassert strip_tags('plain') == 'plain'\n[/TESTS]"
    )
    assert tests.tests == ["assert strip_tags('plain') == 'plain'"]
    assert [f.reason for f in tests.failures] == ["chat_tag"]
    assert "chat_tag" in FAILURE_REASONS
