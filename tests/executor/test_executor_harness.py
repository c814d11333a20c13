"""The harness's trusted comparisons and assert rewriting, run in-process (no Docker needed)."""

from __future__ import annotations

import collections
import json
import os

import pytest

from executor import harness


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __lt__(self, other):
        return True

    def __bool__(self):
        return True

    __hash__ = object.__hash__


class ListThatAgrees(list):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        1j,
        "s",
        b"b",
        range(3),
        (1, [2, {3: "x"}]),
        {1, 2},
        frozenset({1}),
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        collections.deque([1]),
    ],
)
def test_builtin_data_is_trusted(value):
    assert harness.is_trusted(value)


@pytest.mark.parametrize(
    "value",
    [AlwaysEqual(), ListThatAgrees([1]), [1, AlwaysEqual()], {"k": AlwaysEqual()}, object()],
)
def test_user_objects_anywhere_are_untrusted(value):
    assert not harness.is_trusted(value)


def test_cyclic_containers_terminate():
    cycle: list = [1]
    cycle.append(cycle)
    assert harness.is_trusted(cycle)


def test_builtin_comparisons_keep_python_semantics():
    assert harness.compare_chain(("Eq",), 1, 1.0)
    assert harness.compare_chain(("Eq",), [1, (2, "a")], [1, (2, "a")])
    assert not harness.compare_chain(("Eq",), [1], (1,))
    assert harness.compare_chain(("Lt", "LtE"), 1, 2, 2)
    assert not harness.compare_chain(("Lt", "Lt"), 1, 3, 2)
    assert harness.compare_chain(("In",), 2, [1, 2])
    assert harness.compare_chain(("Is",), None, None)


def test_always_equal_objects_cannot_decide_comparisons():
    assert not harness.compare_chain(("Eq",), AlwaysEqual(), [1, 2])
    assert not harness.compare_chain(("Eq",), ListThatAgrees([9]), [1, 2])
    assert not harness.compare_chain(("Eq",), [AlwaysEqual()], [1])
    for op in ("Lt", "In"):
        with pytest.raises(harness.UntrustedComparison):
            harness.compare_chain((op,), AlwaysEqual(), 1)
    assert harness.compare_chain(("NotEq",), AlwaysEqual(), 1)  # `!=` is the negation of the same rule as `==`
    with pytest.raises(harness.UntrustedComparison):
        harness.truth(AlwaysEqual())


def test_same_user_type_equality_needs_both_directions():
    class Point:
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return isinstance(other, Point) and self.x == other.x

    assert harness.compare_chain(("Eq",), Point(1), Point(1))
    assert not harness.compare_chain(("Eq",), Point(1), Point(2))


def _run(solution: str, tests: list[str], setup: str = "") -> list[dict]:
    """Run the harness in this process, returning its records (the in-container path, minus the fork)."""
    read_fd, write_fd = os.pipe()
    try:
        harness.run_job({"solution": solution, "tests": tests, "setup": setup}, harness.ResultChannel(write_fd, "n"))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as handle:
        records = [json.loads(line) for line in handle.read().splitlines()]
    assert all(record.pop("k") == "n" for record in records)
    return records


def test_tests_share_top_level_names_and_see_the_solution():
    records = _run(
        "def f(x):\n    return x * 2\n",
        [
            "import math",
            "values = [f(i) for i in range(3)]",
            "for v in values:\n    last = v",
            "assert last == 4 and math.floor(2.5) == 2",
            "assert all(f(v) == 2 * v for v in values)",
        ],
    )
    assert [r.get("ok") for r in records[:-1]] == [True] * 5
    assert records[-1] == {"done": 5, "load": None, "mem": False}


def test_rebinding_the_helpers_from_the_solution_has_no_effect():
    solution = (
        "import builtins\n"
        "def f():\n"
        "    globals()['__si_cmp__'] = lambda *a: True\n"
        "    globals()['__si_truth__'] = lambda v: True\n"
        "    builtins.__si_cmp__ = lambda *a: True\n"
        "    return 0\n"
    )
    records = _run(solution, ["assert f() == 1 and f() == 1"])
    assert records[0]["ok"] is False


def test_failed_comparison_message_shows_both_sides():
    records = _run("def f():\n    return [1, 2]\n", ["assert f() == [1, 3]"])
    assert records[0] == {"i": 0, "ok": False, "e": "AssertionError: [1, 2] == [1, 3] is false"}


def test_early_exit_inside_a_test_fails_that_test():
    records = _run("import sys\ndef f():\n    sys.exit(0)\n", ["assert f() == 1", "assert 1 == 1"])
    assert records[0]["ok"] is False and records[0]["e"].startswith("SystemExit")
    assert records[1]["ok"] is True


def test_load_errors_and_bad_tests_are_reported():
    assert _run("def f(:\n", ["assert True"])[-1]["load"].startswith("solution: SyntaxError")
    records = _run("x = 1\n", ["assert x ==", "assert x == 1"])
    assert records[0]["ok"] is False and records[0]["e"].startswith("SyntaxError")
    assert records[1]["ok"] is True


def test_containers_of_untrusted_objects_are_compared_element_by_element():
    class Point:
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return type(other) is Point and self.x == other.x

    assert harness.strict_equal([1, Point(2)], [1, Point(2)])
    assert not harness.strict_equal([1, Point(2)], [1, Point(3)])
    assert not harness.strict_equal({"a": AlwaysEqual()}, {"a": 1})
    with pytest.raises(harness.UntrustedComparison):
        harness.strict_equal({AlwaysEqual(): 1}, {AlwaysEqual(): 1})


def test_solution_code_compiles_without_the_harness_future_flags():
    # harness.py has `from __future__ import annotations`; inherited, it turned annotations into strings and
    # @dataclass failed looking the solution's module up in sys.modules.
    solution = "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\ndef f() -> int:\n    return 1\n"
    records = _run(solution, ["assert P(1) == P(1) and f.__annotations__['return'] is int"])
    assert records[0]["ok"] is True and records[-1]["load"] is None


def test_the_judge_takes_only_data_safe_builtins_and_modules():
    handles: dict = {}
    assert harness.encode_value(len, handles) == ["builtin", "len"]
    assert harness.encode_value(exec, handles)[0] == "handle"  # stays in the solution's process
    import math
    import pickle

    assert harness.encode_value(math, handles) == ["module", "math"]
    assert harness.encode_value(pickle, handles)[0] == "handle"
    for tag, payload in (("builtin", "exec"), ("builtin", "eval"), ("module", "pickle"), ("module", "builtins")):
        with pytest.raises(ValueError):
            harness._resolve_in_judge(tag, payload)  # whatever the solution's process sends


def test_the_judge_drops_writable_and_relative_import_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(harness.sys, "path", ["", ".", str(tmp_path), "/"])
    harness._judge_imports_only_from_the_image()
    assert harness.sys.path == (["/"] if not os.access("/", os.W_OK) else [])


def test_solution_objects_are_compared_by_state_not_by_their_eq():
    from dataclasses import dataclass, field

    @dataclass
    class D:
        x: int
        note: str = field(default="", compare=False)

    class Plain:
        pass

    class Liar:
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    handles: dict = {}
    assert harness._state(D(1, "a"), handles)[1:] == ["fields", (1,)]
    assert harness._state(Plain(), handles)[1:] == ["identity", None]
    assert harness._state(Liar(3), handles)[1:] == ["state", {"x": 3}]
    assert harness._state(D(1), handles)[0] == harness._state(D(2), handles)[0] != harness._state(Liar(1), handles)[0]
