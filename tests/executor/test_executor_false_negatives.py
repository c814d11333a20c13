"""False negatives: correct solutions must pass in the sandbox, whatever the shape of their tests.

Each case's ground truth comes from a plain interpreter, in the test: `exec(solution)`, `exec(setup)` and
`exec(test)` for every test, in a fresh `python3 -c` on the host. A case that passes there must pass in the
sandbox (under runc and under runsc), unless it is a control: an object that lies about its equality or
truth, which CPython's assert believes and the sandbox must not (docs/executor.md, "What counts as equal").
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from executor.config import SandboxConfig
from executor.jobs import Job
from executor.sandbox import Sandbox

pytestmark = [pytest.mark.docker]

_COUNTER = "from collections import Counter\ndef counts(text):\n    return Counter(text)\n"
_DATACLASS = """
from dataclasses import dataclass, field
@dataclass
class Point:
    x: int
    y: int
    label: str = field(default='', compare=False)
def shift(p, dx):
    return Point(p.x + dx, p.y, label='moved')
"""

# name -> (solution, tests); every case is correct and must pass.
CASES: dict[str, tuple[str, list[str]]] = {
    "dict_subclass": (
        "class Table(dict):\n    pass\ndef table(pairs):\n    return Table(pairs)\n",
        ["assert table([(1, 2)]) == {1: 2}", "t = table([('a', 1)])\nassert t == {'a': 1} and t['a'] == 1"],
    ),
    "counter_vs_dict": (
        _COUNTER,
        ["assert counts('aab') == {'a': 2, 'b': 1}", "assert counts('') == {}", "c = counts('xx')\nassert c['x'] == 2"],
    ),
    "ordered_dict_vs_dict": (
        "from collections import OrderedDict\ndef index(words):\n    return OrderedDict((w, i) for i, w in enumerate(words))\n",
        ["assert index(['b', 'a']) == {'a': 1, 'b': 0}", "assert list(index(['b', 'a'])) == ['b', 'a']"],
    ),
    "defaultdict": (
        "from collections import defaultdict\ndef group(xs):\n    d = defaultdict(list)\n"
        "    for x in xs:\n        d[x % 2].append(x)\n    return d\n",
        ["assert group([1, 2, 3]) == {1: [1, 3], 0: [2]}", "g = group([4])\nassert g[0] == [4] and 1 not in g"],
    ),
    "namedtuple_vs_tuple": (
        "from collections import namedtuple\nPair = namedtuple('Pair', 'lo hi')\n"
        "def bounds(xs):\n    return Pair(min(xs), max(xs))\n",
        ["assert bounds([3, 1, 2]) == (1, 3)", "b = bounds([5])\nassert b.lo == 5 and b == Pair(5, 5)"],
    ),
    "dataclass_generated_eq": (
        _DATACLASS,
        [
            "assert shift(Point(1, 2), 3) == Point(4, 2)",
            "assert shift(Point(0, 0), 1) != Point(0, 0)",
            "assert [shift(Point(i, 0), 1) for i in range(2)] == [Point(1, 0), Point(2, 0)]",
            "p = shift(Point(1, 1), 1)\nassert p.x == 2 and isinstance(p, Point)",
        ],
    ),
    "bool_vs_int": ("def is_even(n):\n    return n % 2 == 0\n", ["assert is_even(2) == 1", "assert [is_even(n) for n in range(3)] == [1, 0, 1]"]),
    "int_vs_float": (
        "def half(n):\n    return n / 2\n",
        ["assert half(4) == 2", "for n in range(0, 10, 2):\n    assert half(n) == n // 2"],
    ),
    "equal_floats_and_negative_zero": (
        "def neg(x):\n    return -x\n",
        ["assert neg(0.0) == 0.0", "assert neg(0.0) == -0.0 and neg(1.5) == -1.5", "assert abs(neg(0.1) + 0.1) < 1e-12"],
    ),
    "nested_mixed_containers": (
        "from collections import Counter, namedtuple\nP = namedtuple('P', 'a b')\n"
        "def build():\n    return {'c': Counter('aa'), 'p': [P(1, 2.0)], 's': {True, 2}, 't': (1, [2, {3: 4.0}])}\n",
        [
            "assert build() == {'c': {'a': 2}, 'p': [(1, 2)], 's': {1, 2}, 't': (1, [2, {3: 4}])}",
            "b = build()\nassert b['p'][0].b == 2 and b['t'][1][1][3] == 4",
        ],
    ),
    "sets_and_frozensets": (
        "def uniq(xs):\n    return frozenset(xs)\ndef common(a, b):\n    return set(a) & set(b)\n",
        ["assert uniq([1, 1, 2]) == {1, 2}", "assert common('abc', 'bcd') == {'b', 'c'} and uniq('') == set()"],
    ),
    "in_checks": (
        "def primes(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, p))]\n",
        ["assert 7 in primes(10) and 9 not in primes(10)", "for p in (2, 3, 5):\n    assert p in primes(6)"],
    ),
    "sorted_outputs": (
        "def by_length(words):\n    return sorted(words, key=len)\n",
        ["assert by_length(['ccc', 'a', 'bb']) == ['a', 'bb', 'ccc']", "assert sorted(by_length(['b', 'a'])) == ['a', 'b']"],
    ),
    "generator_consumed_by_list": (
        "def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\n",
        ["assert list(evens(5)) == [0, 2, 4]", "assert sum(evens(7)) == 12 and next(evens(3)) == 0"],
    ),
    "unicode_strings": (
        "def rev(s):\n    return s[::-1]\n",
        ["assert rev('héllo wörld ✓') == '✓ dlröw olléh'", "assert rev('日本') == '本日' and len(rev('🙂a')) == 2"],
    ),
    "big_ints": (
        "def fact(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n",
        ["assert fact(30) == 265252859812191058636308480000000", "assert fact(100) % 10 ** 20 == 0 and fact(100) > 10 ** 150"],
    ),
    "deep_recursion_with_raised_limit": (
        "import sys\nsys.setrecursionlimit(10 ** 5)\ndef depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n",
        ["assert depth(5000) == 5000", "assert depth(10) == 10"],
    ),
    "threads_joined": (
        "import threading\ndef parallel_squares(xs):\n    out = [None] * len(xs)\n"
        "    def work(i):\n        out[i] = xs[i] ** 2\n"
        "    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]\n"
        "    for t in threads:\n        t.start()\n    for t in threads:\n        t.join()\n    return out\n",
        ["assert parallel_squares([1, 2, 3]) == [1, 4, 9]", "assert parallel_squares([]) == []"],
    ),
    "thread_pool_executor": (
        "from concurrent.futures import ThreadPoolExecutor\ndef squares(xs):\n"
        "    with ThreadPoolExecutor(max_workers=4) as pool:\n        return list(pool.map(lambda x: x * x, xs))\n",
        ["assert squares(range(5)) == [0, 1, 4, 9, 16]", "assert squares([7]) == [49]"],
    ),
    "tmp_files": (
        "import os, tempfile\ndef roundtrip(text):\n    path = os.path.join(tempfile.gettempdir(), 'x.txt')\n"
        "    with open(path, 'w') as f:\n        f.write(text)\n    with open(path) as f:\n        return f.read()\n",
        ["assert roundtrip('abc') == 'abc'", "assert roundtrip('') == '' and roundtrip('é') == 'é'"],
    ),
    "about_a_second_of_cpu": (
        "def spin(n):\n    total = 0\n    for i in range(n):\n        total += i % 7\n    return total\n",
        ["assert spin(4_000_000) == sum(i % 7 for i in range(4_000_000))"],
    ),
    "several_calls_per_test": (
        "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
        ["assert gcd(12, 18) == 6 and gcd(7, 5) == 1 and gcd(0, 4) == 4", "assert gcd(gcd(8, 12), 6) == 2"],
    ),
    "loops_over_cases": (
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        ["cases = [(0, 0), (1, 1), (10, 55)]\nfor n, want in cases:\n    assert fib(n) == want", "assert all(fib(n) + fib(n + 1) == fib(n + 2) for n in range(20))"],
    ),
    "expected_exception_try_except": (
        "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n",
        [
            "try:\n    root(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False, 'no error'",
            "raised = False\ntry:\n    root(-4)\nexcept ValueError as exc:\n    raised = 'negative' in str(exc)\nassert raised",
            "assert root(4) == 2",
        ],
    ),
    "pytest_raises_like_idiom": (
        "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        if not self.items:\n            raise IndexError('empty')\n        return self.items.pop()\n",
        [
            "def raises(kind, fn, *args):\n    try:\n        fn(*args)\n    except kind:\n        return True\n    return False\nassert raises(IndexError, Stack().pop)",
            "s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2 and s.pop() == 1",
        ],
    ),
    "is_none_and_not": (
        "def find(xs, x):\n    return xs.index(x) if x in xs else None\ndef empty(xs):\n    return len(xs) == 0\n",
        ["assert find([1], 2) is None", "assert not empty([1])", "assert find([1, 2], 2) is not None and not find([1], 2)"],
    ),
    "isinstance_checks": (
        "def split(s):\n    return s.split()\n",
        ["r = split('a b')\nassert isinstance(r, list) and all(isinstance(w, str) for w in r)", "assert type(split('')) is list"],
    ),
    "two_computed_values": (
        "def norm(s):\n    return ''.join(sorted(s.lower()))\n",
        ["assert norm('Listen') == norm('Silent')", "assert norm('ab') != norm('abc')"],
    ),
    "mutates_its_argument": (
        "def bump(xs):\n    xs.append(len(xs))\n",
        ["xs = [0]\nbump(xs)\nbump(xs)\nassert xs == [0, 1, 2]"],
    ),
    "solution_class_with_methods": (
        "class Counter2:\n    def __init__(self):\n        self.n = 0\n    def inc(self):\n        self.n += 1\n        return self\n",
        ["c = Counter2()\nc.inc().inc()\nassert c.n == 2", "assert Counter2().inc().n == 1"],
    ),
    "solution_imports_used_by_tests": (
        "import math\ndef area(r):\n    return math.pi * r * r\n",
        ["assert math.isclose(area(1), math.pi)", "assert abs(area(2) - 4 * math.pi) < 1e-9"],
    ),
    "future_annotations_dataclass": (
        "from __future__ import annotations\nfrom dataclasses import dataclass\n@dataclass(frozen=True)\nclass Item:\n"
        "    name: str\n    qty: int\ndef restock(item: Item) -> Item:\n    return Item(item.name, item.qty + 1)\n",
        ["assert restock(Item('a', 1)) == Item('a', 2)", "assert [restock(Item('a', 0))] == [Item('a', 1)] and restock.__annotations__['item'] == 'Item'"],
    ),
}

# Lying objects: CPython's assert accepts them, the sandbox must not (controls).
CONTROLS: dict[str, tuple[str, list[str]]] = {
    "always_equal": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def fib(n):\n    return Yes()\n",
        ["assert fib(10) == 55", "for n in range(3):\n    assert fib(n) == [0, 1, 1][n]"],
    ),
    "int_subclass_equal_to_everything": (
        "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def fib(n):\n    return I(0)\n",
        ["assert fib(10) == 55 and fib(3) == fib(2) + fib(1) + 1"],
    ),
    "class_with_lying_eq_against_its_own_instances": (
        "class P:\n    def __init__(self, x):\n        self.x = x\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\ndef move(p):\n    return P(0)\n",
        ["assert move(P(1)) == P(2)"],
    ),
    "truthy_non_bool_eq": (
        "class L(list):\n    def __eq__(self, other):\n        return 'yes'\ndef words(s):\n    return L()\n",
        ["assert words('a b') == ['a', 'b'] and words('') == words('x y')"],
    ),
}

_GROUND_TRUTH = """
import json, sys
case = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
exec(case["solution"], ns)
failed = []
for index, test in enumerate(case["tests"]):
    try:
        exec(test, ns)
    except BaseException as exc:
        failed.append([index, repr(exc)])
print(json.dumps(failed))
"""


def plain_python_failures(solution: str, tests: list[str]) -> list:
    """The tests plain CPython fails for this solution, in a fresh interpreter on the host."""
    payload = json.dumps({"solution": solution, "tests": tests})
    out = subprocess.run(
        [sys.executable, "-c", _GROUND_TRUTH], input=payload, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def _job(name: str, source: str, tests: list[str]) -> Job:
    return Job(id=name, solution=textwrap.dedent(source), tests=tests)


@pytest.fixture(scope="module")
def false_negative_results(runtime_sandbox):
    """Every case and control, run once per runtime in one batch."""
    everything = {**CASES, **CONTROLS}
    results = runtime_sandbox.run([_job(name, *everything[name]) for name in everything])
    return {result.id: result for result in results}


@pytest.fixture(scope="module")
def roomy_sandbox(sandbox_image, docker_client, runtime):
    """The default test pools give jobs 256 MB of address space; this one gives 1 GB."""
    with Sandbox(
        SandboxConfig(workers=1, timeout_s=10, memory_mb=1024, tmpfs_mb=16, runtime=runtime), client=docker_client
    ) as pool:
        yield pool


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_correct_solution_passes_in_python_and_in_the_sandbox(false_negative_results, name):
    solution, tests = CASES[name]
    assert plain_python_failures(textwrap.dedent(solution), tests) == []  # the ground truth: it is correct
    result = false_negative_results[name]
    assert result.outcome == "passed", (result.outcome, result.tests, result.stderr[-800:])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_a_lying_object_passes_in_python_but_not_in_the_sandbox(false_negative_results, name):
    solution, tests = CONTROLS[name]
    assert plain_python_failures(textwrap.dedent(solution), tests) == []  # CPython's assert believes the lie
    result = false_negative_results[name]
    assert result.outcome == "failed" and not any(t.passed for t in result.tests), (result.outcome, result.tests)


@pytest.mark.timeout(120)
def test_a_few_hundred_megabytes_pass_with_room_for_them(roomy_sandbox):
    solution = "def big(n):\n    blob = bytearray(n << 20)\n    return len(blob) >> 20\n"
    tests = ["assert big(300) == 300", "for n in (100, 200):\n    assert big(n) == n"]
    assert plain_python_failures(solution, tests) == []
    (result,) = roomy_sandbox.run([_job("memory", solution, tests)])
    assert result.outcome == "passed", (result.outcome, result.tests, result.stderr[-800:])


def test_the_suite_is_large_enough():
    assert len(CASES) >= 30 and len(CONTROLS) >= 3
