"""Probes: which tests keep their expected value on the host, and how the host judges returned values."""

from __future__ import annotations

import collections
import datetime
import decimal
import json
import math

import pytest

from executor import harness
from executor.jobs import Job
from executor.probes import Probe, judge, split_test
from executor.sandbox import runner_payload


@pytest.mark.parametrize(
    ("source", "probe"),
    [
        ("assert f(3) == [1, 2]", Probe("f(3)", "Eq", [1, 2])),
        ("assert [1, 2] == f(3)", Probe("f(3)", "Eq", [1, 2], literal_left=True)),
        ("assert f('a') != -1", Probe("f('a')", "NotEq", -1)),
        ("assert abs(f(1.5) - 0.5) < 1e-06", Probe("abs(f(1.5) - 0.5)", "Lt", 1e-06)),
        ("assert 3 in f()", Probe("f()", "In", 3, literal_left=True)),
        ("assert f() is None", Probe("f()", "Is", None)),
        ("assert is_prime(7)", Probe("is_prime(7)", "Truth")),
        ("assert not is_prime(8)", Probe("is_prime(8)", "Not")),
        ("assert f(1) == 1, 'message'", Probe("f(1)", "Eq", 1)),
        ("assert f([3, 5]) == (3 + 5, 3 * 5)", Probe("f([3, 5])", "Eq", (8, 15))),
        ("assert f() == -1 / 4 + 2 // 3", Probe("f()", "Eq", -0.25)),
        ("assert f() == 'ab' + 'c'", Probe("f()", "Eq", "abc")),
        ("assert True", Probe("True", "Truth")),  # a constant: no reason for the judge's process
        ("assert ()", Probe("()", "Truth")),
    ],
)
def test_simple_asserts_become_probes(source, probe):
    assert split_test(source) == probe


@pytest.mark.parametrize(
    "source",
    [
        "assert f(1) == 1 and f(2) == 2",  # several comparisons: runs as a statement
        "assert 1 < f(2) < 3",
        "assert f(1) == g(1)",  # no literal side
        "assert f() is 1",
        "assert 1 == 1",  # both sides literal: rare, left as it was
        "x = f(1)",
        "for i in range(3):\n    assert f(i) == i",
        "assert f(1) ==",
        "assert (y := f(1)) == 1",
        "assert f() == 2 ** 10",  # no powers: 10 ** 10 ** 10 must never be evaluated on the host
        "assert f() == 'a' * 10",
        "assert f() == (1 << 5000) * (1 << 5000)",
        "assert f() == 1 / 0",
    ],
)
def test_other_tests_run_as_statements(source):
    assert split_test(source) is None


def test_expected_values_never_reach_the_runner():
    job = Job(id="j", solution="def f(x):\n    return x\n", tests=["assert f(3) == 917263", "assert not f(0)"])
    payload, probes = runner_payload(job, 10.0)
    assert payload["tests"] == [{"probe": "f(3)"}, {"probe": "f(0)"}]
    assert "917263" not in json.dumps(payload) and probes[0].expected == 917263


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**80),
        2.5,
        -0.0,
        math.inf,
        "s\udc80",
        b"\x00\xff",
        [1, (2, {3: "x"})],
        {1, 2},
        frozenset({3}),
        collections.deque([1]),
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        1 + 2j,
        range(1, 9, 2),
        ...,
        decimal.Decimal("1.10"),
        datetime.date(2020, 1, 2),
        datetime.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        datetime.timedelta(1, 2, 3),
    ],
)
def test_trusted_values_round_trip_exactly(value):
    decoded = harness.decode_value(json.loads(json.dumps(harness.encode_value(value))))
    assert type(decoded) is type(value) and decoded == value


def test_plain_subclasses_travel_as_their_base_and_namedtuples_as_namedtuples():
    class Plain(tuple):
        pass

    point = collections.namedtuple("Point", "x y")(1, 2)
    decoded = harness.decode_value(json.loads(json.dumps(harness.encode_value(point))))
    assert decoded == (1, 2) and decoded._fields == ("x", "y")
    lookalike = Plain(("ntuple", "Point", ("x",), (1,)))  # a tuple, whatever its items spell
    decoded = harness.decode_value(json.loads(json.dumps(harness.encode_value(lookalike))))
    assert type(decoded) is tuple and decoded == ("ntuple", "Point", ("x",), (1,))
    counted = harness.decode_value(json.loads(json.dumps(harness.encode_value(collections.Counter("aab")))))
    assert type(counted) is collections.Counter and counted == {"a": 2, "b": 1}


def test_untrusted_values_are_refused_and_forged_data_is_unreadable():
    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(harness.UntrustedComparison):
        harness.encode_value([1, Anything()])
    for forged in ({"a": 1}, ["list"], ["nope", 1], ["int", "zz"], ["complex", "x"]):
        with pytest.raises(ValueError):
            harness.decode_value(forged)


def test_judging_uses_python_semantics_on_trusted_values():
    assert judge(Probe("f()", "Eq", 1.0), 1).passed
    assert judge(Probe("f()", "Eq", [1, 2]), ["tuple", [1, 2]]).error == "AssertionError: (1, 2) == [1, 2] is false"
    assert judge(Probe("f()", "Lt", 1e-6), 0.0).passed
    assert judge(Probe("f()", "In", 2, literal_left=True), ["list", [1, 2]]).passed
    assert judge(Probe("f()", "Truth"), ["list", []]).error == "AssertionError: [] is not true"
    assert judge(Probe("f()", "Not"), 0).passed
    assert judge(Probe("f()", "Is", None), None).passed
    assert judge(Probe("f()", "Lt", 1), "a").error.startswith("TypeError")
    assert judge(Probe("f()", "Eq", 1), {"forged": 1}).error.startswith("unreadable value")
