"""Parsers for the three kinds of completion: a numbered list of problems, `[TESTS]` asserts, `[PYTHON]` code.

LLM output is untrusted input. Every parser takes whatever came back (text, or bytes that may not be
UTF-8, of any size) and never raises: it returns what it could use plus a `ParseFailure` with a reason
for everything it could not. Servers do not return the stop string, so a missing closing tag is
normal; a missing closing tag on a completion that ran out of tokens (`finish_reason == "length"`)
means the last item was cut off, and that item is dropped as `truncated`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from generator.prompts import CHAT_TAGS, PYTHON_CLOSE, PYTHON_OPEN, TESTS_CLOSE, TESTS_OPEN

FailureReason = Literal[
    "not_utf8",  # bytes that are not UTF-8, or text with lone surrogates
    "nul_byte",  # a NUL character (no database text column takes it; Python refuses it as source)
    "too_long",  # the completion or one item is longer than the limit
    "empty",  # nothing but whitespace
    "no_list",  # problems: no numbered item found
    "too_short",  # problems: an item too short to be a problem statement
    "truncated",  # the last item of a completion cut off by the token limit
    "missing_tag",  # tests/solutions: no [TESTS] / [PYTHON] opening tag
    "syntax_error",  # code or an assert that does not parse
    "not_assert",  # tests: a statement that is not an assert
    "trivial_assert",  # tests: an assert that calls nothing, so it cannot test a function
    "duplicate",  # tests: the same assert twice in one completion
    "no_tests",  # tests: no usable assert at all
    "no_function",  # solutions: code that defines no function
    "chat_tag",  # problems/tests: text with [INST], [/INST] or <<SYS>>, which would forge turns in later prompts
]
FAILURE_REASONS: tuple[str, ...] = FailureReason.__args__  # type: ignore[attr-defined]

MAX_COMPLETION_CHARS = 100_000
MAX_ITEM_CHARS = 4_000
MIN_PROBLEM_CHARS = 12
_DETAIL_CHARS = 160


class ParseFailure(BaseModel):
    """Why (part of) a completion was not used; `detail` is a short excerpt or error message."""

    reason: FailureReason
    detail: str = ""


class ProblemsParse(BaseModel):
    problems: list[str] = Field(default_factory=list)
    failures: list[ParseFailure] = Field(default_factory=list)


class TestsParse(BaseModel):
    __test__ = False  # not a pytest test class

    tests: list[str] = Field(default_factory=list)
    failures: list[ParseFailure] = Field(default_factory=list)
    entry_point: str | None = None  # the function most asserts call


class SolutionParse(BaseModel):
    code: str | None = None
    failure: ParseFailure | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None


def _failure(reason: FailureReason, detail: object = "") -> ParseFailure:
    text = str(detail)
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 3] + "..."
    return ParseFailure(reason=reason, detail=text)


def as_text(raw: str | bytes, max_chars: int = MAX_COMPLETION_CHARS) -> str | ParseFailure:
    """The completion as clean text, or the reason it cannot be used at all."""
    if isinstance(raw, bytes):
        if len(raw) > 4 * max_chars:
            return _failure("too_long", f"{len(raw)} bytes")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _failure("not_utf8", exc)
    if len(raw) > max_chars:
        return _failure("too_long", f"{len(raw)} characters > {max_chars}")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        return _failure("not_utf8", exc)
    if "\x00" in raw:
        return _failure("nul_byte", f"at offset {raw.index(chr(0))}")
    if not raw.strip():
        return _failure("empty")
    return raw


def _parse_python(source: str) -> ast.Module | ParseFailure:
    """`ast.parse` that turns every way it can fail on hostile text into a `syntax_error` failure."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return _failure("syntax_error", f"{exc.__class__.__name__}: {exc}")


def _tagged_block(text: str, open_tag: str, close_tag: str) -> tuple[str, bool] | None:
    """The text after the first `open_tag` up to `close_tag` (if present), and whether it was closed."""
    start = text.find(open_tag)
    if start < 0:
        return None
    body = text[start + len(open_tag) :]
    end = body.find(close_tag)
    if end >= 0:
        return body[:end], True
    return body, False


# ---------------------------------------------------------------------------------------------------
# Problems: "1. Write a function ...", "2) ...", "**3.** ...", "Question 4: ...", "- 5. ..."

_ITEM = re.compile(
    r"^\s*(?:[-*]\s+)?(?:\*\*|__)?(?:(?:question|problem|q)\s*)?(\d{1,4})(?:\*\*|__)?"
    r"(?:[.)\]]|:)(?:\*\*|__)?\s+(\S.*)$",
    re.IGNORECASE,
)
_MARKDOWN_EMPHASIS = re.compile(r"(\*\*|__)")
_SPACE = re.compile(r"\s+")


def _clean_problem(lines: list[str]) -> str:
    text = " ".join(line.strip() for line in lines)
    text = _MARKDOWN_EMPHASIS.sub("", text)
    return _SPACE.sub(" ", text).strip()


def parse_problems(
    raw: str | bytes,
    finish_reason: str | None = None,
    min_chars: int = MIN_PROBLEM_CHARS,
    max_chars: int = MAX_ITEM_CHARS,
) -> ProblemsParse:
    """The numbered items of a problems completion, each as one line of text, in order.

    An item runs from its numbered line over the lines that follow it directly, and over indented
    lines after a blank line (examples); an unindented line after a blank line (a heading such as
    "Medium:", or a closing remark) ends it and is not part of any item.
    """
    text = as_text(raw)
    if isinstance(text, ParseFailure):
        return ProblemsParse(failures=[text])

    items: list[list[str]] = []
    current: list[str] | None = None
    after_blank = False
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            current = [match.group(2)]
            items.append(current)
            after_blank = False
        elif not line.strip():
            after_blank = True
        elif current is not None and (not after_blank or line[:1] in (" ", "\t")):
            current.append(line)
            after_blank = False
        else:
            current = None

    if not items:
        return ProblemsParse(failures=[_failure("no_list", text.strip()[:_DETAIL_CHARS])])

    result = ProblemsParse()
    for index, lines in enumerate(items):
        problem = _clean_problem(lines)
        if index == len(items) - 1 and finish_reason == "length":
            result.failures.append(_failure("truncated", problem))
        elif len(problem) < min_chars:
            result.failures.append(_failure("too_short", problem))
        elif len(problem) > max_chars:
            result.failures.append(_failure("too_long", f"{len(problem)} characters"))
        elif _has_chat_tag(problem):
            result.failures.append(_failure("chat_tag", problem))
        else:
            result.problems.append(problem)
    return result


# ---------------------------------------------------------------------------------------------------
# Tests: asserts between [TESTS] and [/TESTS], "# Test case n:" comments between them.

_ASSERT_START = re.compile(r"assert\b")


def _assert_chunks(body: str) -> tuple[list[str], list[str]]:
    """Split a tests block into one chunk of source per assert, and the stray lines outside them.

    A chunk starts at an unindented `assert` and runs until the next unindented `assert` or comment,
    so an assert written over several lines stays whole and one broken assert cannot spoil the rest.
    """
    chunks: list[list[str]] = []
    stray: list[str] = []
    current: list[str] | None = None
    for line in textwrap.dedent(body).splitlines():
        if _ASSERT_START.match(line):
            current = [line]
            chunks.append(current)
        elif line.startswith("#") or not line.strip():
            current = None if line.startswith("#") else current
        elif current is not None:
            current.append(line)
        else:
            stray.append(line)
    return ["\n".join(chunk).rstrip() for chunk in chunks], stray


def _called_name(node: ast.AST) -> str | None:
    """The first plain function name called inside `node` (the function under test, usually)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
            return sub.func.id
    return None


def _has_chat_tag(text: str) -> bool:
    """Whether `text` would add or end a turn once placed in a later stage's prompt (raw or chat)."""
    return any(tag in text for tag in CHAT_TAGS)


def parse_tests(raw: str | bytes, finish_reason: str | None = None, max_chars: int = MAX_ITEM_CHARS) -> TestsParse:
    """The asserts of a tests completion that parse and call something, in order, without repeats."""
    text = as_text(raw)
    if isinstance(text, ParseFailure):
        return TestsParse(failures=[text])
    block = _tagged_block(text, TESTS_OPEN, TESTS_CLOSE)
    if block is None:
        return TestsParse(failures=[_failure("missing_tag", f"no {TESTS_OPEN} in: {text.strip()}")])
    body, closed = block
    chunks, stray = _assert_chunks(body)

    result = TestsParse()
    for line in stray:
        result.failures.append(_failure("not_assert", line.strip()))
    if chunks and not closed and finish_reason == "length":
        result.failures.append(_failure("truncated", chunks.pop()))
    seen: set[str] = set()
    names: Counter[str] = Counter()
    for chunk in chunks:
        if len(chunk) > max_chars:
            result.failures.append(_failure("too_long", f"{len(chunk)} characters"))
            continue
        module = _parse_python(chunk)
        if isinstance(module, ParseFailure):
            result.failures.append(module.model_copy(update={"detail": f"{module.detail} in: {chunk}"[:_DETAIL_CHARS]}))
            continue
        for stmt in module.body:
            source = ast.get_source_segment(chunk, stmt) or ""
            if not isinstance(stmt, ast.Assert):
                result.failures.append(_failure("not_assert", source))
            elif not any(isinstance(node, ast.Call) for node in ast.walk(stmt.test)):
                result.failures.append(_failure("trivial_assert", source))
            elif source in seen:
                result.failures.append(_failure("duplicate", source))
            elif _has_chat_tag(source):
                result.failures.append(_failure("chat_tag", source))
            else:
                seen.add(source)
                result.tests.append(source)
                if name := _called_name(stmt.test):
                    names[name] += 1
    if not result.tests:
        result.failures.append(_failure("no_tests", body.strip()))
    result.entry_point = names.most_common(1)[0][0] if names else None
    return result


# ---------------------------------------------------------------------------------------------------
# Solutions: code between [PYTHON] and [/PYTHON].

_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n|\n\s*```\s*$")


def parse_solution(raw: str | bytes, finish_reason: str | None = None, max_chars: int = 20_000) -> SolutionParse:
    """The code of a solution completion if it parses and defines a function, else why not."""
    text = as_text(raw)
    if isinstance(text, ParseFailure):
        return SolutionParse(failure=text)
    block = _tagged_block(text, PYTHON_OPEN, PYTHON_CLOSE)
    if block is None:
        return SolutionParse(failure=_failure("missing_tag", f"no {PYTHON_OPEN} in: {text.strip()}"))
    body, closed = block
    if not closed and finish_reason == "length":
        return SolutionParse(failure=_failure("truncated", body.strip()[-_DETAIL_CHARS:]))
    code = textwrap.dedent(_FENCE.sub("", body)).strip("\n").rstrip()
    if not code.strip():
        return SolutionParse(failure=_failure("empty"))
    if len(code) > max_chars:
        return SolutionParse(failure=_failure("too_long", f"{len(code)} characters > {max_chars}"))
    module = _parse_python(code)
    if isinstance(module, ParseFailure):
        return SolutionParse(failure=module)
    if not any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in module.body):
        return SolutionParse(failure=_failure("no_function", code))
    return SolutionParse(code=code + "\n")
