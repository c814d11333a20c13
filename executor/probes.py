"""Probes: tests whose expected value never enters the sandbox.

For a test like `assert f(3) == [1, 2]`, the solution runs in the same process as the harness, so any
verdict the sandbox reports could in principle be forged by code that introspects the harness. A probe
sends only the expression `f(3)` into the sandbox; the harness returns its value (trusted types only,
see `harness.encode_value`), and the host compares it with `[1, 2]`, which the sandbox never saw. Code
that forges records can then only "pass" by producing the right values, which is solving the problem.

A test becomes a probe when it is a single `assert` of one of these shapes (the literal is anything
`ast.literal_eval` accepts, or bounded arithmetic on such literals like `(3 + 5, 3 * 5)`):
`EXPR <op> LITERAL` or `LITERAL <op> EXPR` with op one of ==, !=, <, <=,
>, >=, in, not in; `EXPR is [not] None|True|False`; `EXPR` or `not EXPR` where EXPR is a call, a name,
an attribute or a subscript; a bare literal (`assert True`). Every other test runs as a statement.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

from executor import harness
from executor.jobs import TestResult

_MISSING = object()
_COMPARE_OPS = {"Eq", "NotEq", "Lt", "LtE", "Gt", "GtE", "In", "NotIn", "Is", "IsNot"}
_TRUTH_SHAPES = (ast.Call, ast.Name, ast.Attribute, ast.Subscript)


@dataclass(frozen=True)
class Probe:
    """What the sandbox evaluates (`expression`) and what the host checks its value against."""

    expression: str
    op: str  # a comparison name (ast class name), "Truth" or "Not"
    expected: object = None
    literal_left: bool = False


_ARITHMETIC = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_MAX_FOLDED_BITS = 4096
_MAX_FOLDED_CHARS = 10_000


def _fold(node: ast.AST) -> object:
    """Arithmetic on literals (`3 + 5 + 7`, `2 * 0.5`, `"a" + "b"`), evaluated on the host with bounded
    sizes; anything else raises ValueError. `ast.literal_eval` alone refuses these."""
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal_value(node.left), _literal_value(node.right)
        numbers = all(type(v) in (int, float) for v in (left, right))
        strings = type(left) is str and type(right) is str and isinstance(node.op, ast.Add)
        if not (numbers or strings):
            raise ValueError("only arithmetic on numbers, or joining strings")
        value = _ARITHMETIC[type(node.op)](left, right)
        if (type(value) is int and value.bit_length() > _MAX_FOLDED_BITS) or (
            type(value) is str and len(value) > _MAX_FOLDED_CHARS
        ):
            raise ValueError("folded constant too large")
        return value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_literal_value(item) for item in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal_value(k): _literal_value(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def _literal_value(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _fold(node)


def _literal(node: ast.AST) -> object:
    try:
        return _literal_value(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, ZeroDivisionError, OverflowError):
        return _MISSING


@functools.lru_cache(maxsize=65536)
def split_test(source: str) -> Probe | None:
    """The probe for a test, or None when the test must run as a statement."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    if any(isinstance(node, ast.NamedExpr) for node in ast.walk(test)):
        return None  # `:=` binds a name later tests may use: keep the statement's module-level semantics
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op = type(test.ops[0]).__name__
        left, right = test.left, test.comparators[0]
        left_value, right_value = _literal(left), _literal(right)
        if op not in _COMPARE_OPS or (left_value is _MISSING) == (right_value is _MISSING):
            return None
        literal_left = right_value is _MISSING
        expected = left_value if literal_left else right_value
        if op in ("Is", "IsNot") and (literal_left or type(expected) not in (type(None), bool)):
            return None  # identity only against None/True/False; `x is 1` is not a value comparison
        return Probe(ast.unparse(right if literal_left else left), op, expected, literal_left)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, _TRUTH_SHAPES):
        return Probe(ast.unparse(test.operand), "Not")
    if isinstance(test, _TRUTH_SHAPES) and _literal(test) is _MISSING:
        return Probe(ast.unparse(test), "Truth")
    if not isinstance(test, ast.Compare) and _literal(test) is not _MISSING:
        # `assert True` (48 of HumanEval's statements): a constant touches no solution code, and as a
        # statement it would send its whole job down the two-process path for nothing
        return Probe(ast.unparse(test), "Truth")
    return None


def judge(probe: Probe, encoded: object) -> TestResult:
    """Check a probe's value (as it came back from the sandbox) against what the test expects."""
    try:
        value = harness.decode_value(encoded)
    except (ValueError, RecursionError) as exc:
        return TestResult(passed=False, error=f"unreadable value from the sandbox: {exc}"[: harness.MAX_ERROR_CHARS])
    short = harness._SHORT_REPR.repr
    try:
        if probe.op == "Truth":
            ok = harness.truth(value)
            failure = f"{short(value)} is not true"
        elif probe.op == "Not":
            ok = not harness.truth(value)
            failure = f"{short(value)} is not false"
        else:
            left, right = (probe.expected, value) if probe.literal_left else (value, probe.expected)
            ok = harness.compare(probe.op, left, right)
            failure = harness._mismatch_text(probe.op, left, right)
    except Exception as exc:  # noqa: BLE001 - e.g. TypeError for `"a" < 1`: the test fails with it
        return TestResult(passed=False, error=harness.describe(exc))
    return TestResult(passed=True) if ok else TestResult(passed=False, error=f"AssertionError: {failure}")
