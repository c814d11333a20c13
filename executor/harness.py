"""The test harness that runs inside each job's forked child: solution, then every test, one verdict each.

This file is shipped verbatim into the sandbox (see `runner.py`), so it uses the standard library only
and imports nothing from this project. It is also importable on the host, where its pure parts
(assert rewriting, trusted comparison) are unit-tested.

Why asserts are rewritten. A test like `assert f(x) == [1, 2]` is normally decided by the object
`f(x)` returns: an object whose `__eq__` always answers True passes every such test. The harness
therefore compiles each `assert` so that every comparison and the final truth test go through
`compare`/`truth` below, which decide on "trusted" values (exact built-in types whose behaviour no
solution can change, recursively for containers) with the built-in operators, and refuse to let an
untrusted object decide: `==` between untrusted objects needs the same exact type and agreement in
both directions; ordering, `in` and truth tests on untrusted objects fail. The helpers reach the test
as function arguments (fast locals), so a solution that rebinds globals or builtins cannot swap them.

Why results travel over a private pipe with a nonce. The solution runs in the harness's process, so
its exit status and its stdout prove nothing: the harness streams one record per test, then a final
record, each tagged with a per-job nonce, over a pipe the runner reads. A job passes only when every
test's record says passed and the final record arrived; exiting early in any way (`sys.exit`,
`os._exit`, killing the process) leaves records missing. Code in the same process can still find the
channel in memory and write records itself; that is why simple tests arrive as probes (see
executor/probes.py): for those the harness only reports the expression's value (`encode_value`) and
the host, which alone holds the expected value, decides. Tests of other shapes keep the in-process
verdict (docs/executor.md states the limit).
"""

from __future__ import annotations

import ast
import builtins
import collections
import datetime
import decimal
import json
import os
import reprlib
import sys

# The harness's own builtins: a snapshot taken before any solution runs. Functions capture their module's
# builtins when they are defined, so a solution that patches the `builtins` module (`exec`, `isinstance`,
# `len`, ...) cannot change what the harness's code does. The solution keeps the real module; each test
# gets a fresh copy of this snapshot (see run_job).
__builtins__ = dict(vars(builtins))
_os_write = os.write  # bound now: a solution that replaces os.write must not see (or swallow) the records
_json_dumps = json.dumps

TEST_FUNCTION = "__si_test__"
COMPARE_HELPER = "__si_cmp__"  # dunder-terminated names are not mangled inside class bodies
TRUTH_HELPER = "__si_truth__"
MAX_ERROR_CHARS = 500
MAX_TRUSTED_NODES = 2_000_000
MAX_VALUE_CHARS = 1 << 20  # a probe's encoded value; larger values fail the test rather than flood the runner

# Exact types whose equality, ordering and truth are implemented in C and cannot be changed at run time.
_TRUSTED_LEAVES = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        range,
        type(Ellipsis),
        decimal.Decimal,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
    }
)
_TRUSTED_SEQUENCES = frozenset({list, tuple, set, frozenset, collections.deque})
_TRUSTED_MAPPINGS = frozenset({dict, collections.OrderedDict, collections.defaultdict, collections.Counter})
_JUDGE_TUPLES: set = set()  # namedtuple classes the judge rebuilt from a solution's namedtuples (trusted there)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxset = _SHORT_REPR.maxdict = 8
_last_mismatch: list[str] = []  # the most recent false comparison of the running test, for its message


class UntrustedComparison(AssertionError):
    """An assert depended on an object that could decide its own comparison or truth value."""


# --------------------------------------------------------------------------------------------------
# Trusted values and comparisons
# --------------------------------------------------------------------------------------------------


def is_trusted(value: object) -> bool:
    """True when `value` is built only from exact built-in types (no subclass, no user class)."""
    stack = [value]
    seen: set[int] = set()
    budget = MAX_TRUSTED_NODES
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        kind = type(item)
        if kind in _TRUSTED_LEAVES:
            continue
        if kind in _TRUSTED_SEQUENCES or kind in _TRUSTED_MAPPINGS or kind in _JUDGE_TUPLES:
            if id(item) in seen:
                continue
            seen.add(id(item))
            if kind in _TRUSTED_MAPPINGS:  # a defaultdict's factory is never called by comparison
                stack.extend(dict.keys(item))
                stack.extend(dict.values(item))
            else:
                stack.extend(item)
            continue
        return False
    return True


_ORDERING = {
    "Lt": lambda a, b: a < b,
    "LtE": lambda a, b: a <= b,
    "Gt": lambda a, b: a > b,
    "GtE": lambda a, b: a >= b,
    "Eq": lambda a, b: a == b,
    "NotEq": lambda a, b: a != b,
    "In": lambda a, b: a in b,
    "NotIn": lambda a, b: a not in b,
}
_SYMBOL = {
    "Lt": "<",
    "LtE": "<=",
    "Gt": ">",
    "GtE": ">=",
    "Eq": "==",
    "NotEq": "!=",
    "In": "in",
    "NotIn": "not in",
    "Is": "is",
    "IsNot": "is not",
}


def _type_name(value: object) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "")
    return kind.__qualname__ if module in ("builtins", "__main__", "solution") else f"{module}.{kind.__qualname__}"


def compare(op: str, left: object, right: object) -> bool:
    """One comparison of an assert, decided without letting an untrusted object vote for itself."""
    if op == "Is":
        return left is right
    if op == "IsNot":
        return left is not right
    if is_trusted(left) and is_trusted(right):
        return bool(_ORDERING[op](left, right))  # built-in operators on built-in data: no user code runs
    if op == "Eq":
        return strict_equal(left, right)
    if op == "NotEq":
        return not strict_equal(left, right)
    raise UntrustedComparison(
        f"cannot decide `{_SYMBOL[op]}` between {_type_name(left)} and {_type_name(right)}: "
        "the result would be chosen by the object itself"
    )


def strict_equal(left: object, right: object) -> bool:
    """`==` when an untrusted object is involved: built-in containers are compared element by element with
    these rules; user-defined objects must have the same exact type and agree in both directions."""
    if is_trusted(left) and is_trusted(right):
        return bool(left == right)
    kind = type(left)
    if kind is not type(right):
        return False
    if kind in (list, tuple, collections.deque):
        return len(left) == len(right) and all(strict_equal(a, b) for a, b in zip(left, right))
    if kind in _TRUSTED_MAPPINGS:
        keys = list(dict.keys(left))
        if not (is_trusted(keys) and is_trusted(list(dict.keys(right)))):
            raise UntrustedComparison(f"cannot compare {_type_name(left)}s keyed by untrusted objects")
        return (
            len(left) == len(right)
            and all(key in right for key in keys)
            and all(strict_equal(dict.__getitem__(left, key), dict.__getitem__(right, key)) for key in keys)
        )
    if kind in (set, frozenset):
        raise UntrustedComparison(f"cannot compare {_type_name(left)}s of untrusted objects")
    if kind is Remote:  # two objects of the solution's (judge side): compared by what they are, see _remote_equal
        return _remote_equal(left, right)
    # Same user-defined type on both sides: its __eq__ must agree in both directions and return a real bool.
    return (left == right) is True and (right == left) is True


def compare_chain(ops: tuple[str, ...], *operands: object) -> bool:
    """`a < b < c` as the harness evaluates it (operands already evaluated, left to right)."""
    for index, op in enumerate(ops):
        left, right = operands[index], operands[index + 1]
        if not compare(op, left, right):
            _last_mismatch[:] = [_mismatch_text(op, left, right)]
            return False
    return True


def _mismatch_text(op: str, left: object, right: object) -> str:
    def show(value: object) -> str:
        if type(value) is Remote:
            return f"<{object.__getattribute__(value, '_t')} object>"
        return _SHORT_REPR.repr(value) if is_trusted(value) else f"<{_type_name(value)} object>"

    return f"{show(left)} {_SYMBOL[op]} {show(right)} is false"


def truth(value: object) -> bool:
    """The truth value of an assert's condition, refusing objects that define their own `__bool__`."""
    if value is True or value is False:
        return value
    if is_trusted(value):
        return bool(value)
    raise UntrustedComparison(f"assert on a {_type_name(value)} object: its truth value is not trusted")


# --------------------------------------------------------------------------------------------------
# Probe values: trusted data across the sandbox boundary
# --------------------------------------------------------------------------------------------------
# JSON scalars stand for themselves (None, bool, str, float, ints that JSON readers keep exact); every
# other value is a tagged list ["tag", payload], so a decoder never guesses a type.

_EXACT_INT = 1 << 53
_TAGGED_SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset", collections.deque: "deque"}
_TAGGED_MAPPINGS = {
    dict: "dict",
    collections.OrderedDict: "odict",
    collections.defaultdict: "ddict",
    collections.Counter: "counter",
}
# What a subclass may override and still be encoded as its built-in base: nothing that decides comparison,
# hashing, truth, length, iteration, membership, item access or conversion.
_BEHAVIOUR = frozenset(
    "__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __hash__ __bool__ __len__ __iter__ __contains__ __getitem__ "
    "__index__ __int__ __float__ __str__ __bytes__ __complex__ __reversed__ keys items values get __missing__".split()
)
_SAFE_BASES = (
    collections.Counter, collections.OrderedDict, collections.defaultdict, collections.deque,
    dict, list, tuple, set, frozenset, str, bytes, int, float, complex,
)


def _as_base(value: object) -> object:
    """A subclass instance as its built-in (or collections) base when the subclass changes none of the
    behaviour comparisons use (`class D(dict): pass`, a namedtuple, ...); _MISSING_BASE otherwise.
    Namedtuples come back as (_NAMEDTUPLE, name, fields, items) so the other side can rebuild one with the
    same fields (marked by identity: a tuple subclass holding ("ntuple", ...) stays a tuple)."""
    kind = type(value)
    for cls in kind.__mro__:
        if cls in _SAFE_BASES:
            base = cls
            break
        if any(name in _BEHAVIOUR for name in vars(cls)):
            return _MISSING_BASE
    else:
        return _MISSING_BASE
    if base is tuple and type(getattr(kind, "_fields", None)) is tuple:
        return (_NAMEDTUPLE, kind.__name__, kind._fields, tuple.__getitem__(value, slice(None)))
    if base in _TAGGED_MAPPINGS:
        return _mapping(base, dict.items(value))
    if base in (list, tuple, set, frozenset, collections.deque):
        return base(base.__iter__(value))
    if base is str:
        return str.__getitem__(value, slice(None))
    if base is bytes:
        return bytes.__getitem__(value, slice(None))
    return {int: int.__int__, float: float.__float__, complex: complex.__complex__}[base](value)


_MISSING_BASE = object()
_NAMEDTUPLE = object()


def _mapping(kind: type, pairs: object) -> dict:
    """A dict, OrderedDict, defaultdict (no factory) or Counter holding exactly `pairs`."""
    if kind is collections.defaultdict:
        return collections.defaultdict(None, pairs)
    if kind is collections.Counter:
        counter = collections.Counter()
        dict.update(counter, pairs)  # dict's own update: Counter's would count the pairs
        return counter
    return kind(pairs)


def encode_value(value: object, handles: dict | None = None) -> object:
    """A trusted value as JSON-ready data. Subclasses that change no comparison behaviour travel as their
    base (`_as_base`). Anything else raises UntrustedComparison, or with `handles` (the solution's process
    answering the judge) is kept there and sent as ["handle", [id, type name]]."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -_EXACT_INT < value < _EXACT_INT else ["int", hex(value)]
    if kind in _TAGGED_SEQUENCES:
        return [_TAGGED_SEQUENCES[kind], [encode_value(item, handles) for item in value]]
    if kind in _TAGGED_MAPPINGS:
        pairs = [[encode_value(k, handles), encode_value(v, handles)] for k, v in dict.items(value)]
        return [_TAGGED_MAPPINGS[kind], pairs]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind is complex:
        return ["complex", [value.real, value.imag]]
    if kind is range:
        return ["range", [value.start, value.stop, value.step]]
    if kind is type(Ellipsis):
        return ["ellipsis", None]
    if kind is decimal.Decimal:
        return ["decimal", str(value)]
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return [kind.__name__, value.isoformat()]
    if kind is datetime.timedelta:
        return ["timedelta", [value.days, value.seconds, value.microseconds]]
    if kind is datetime.timezone:
        return ["timezone", [encode_value(value.utcoffset(None)), value.tzname(None)]]
    if kind in _JUDGE_TUPLES:
        return _encode_namedtuple(kind.__name__, kind._fields, value, handles)
    if kind is Remote and handles is not None:
        return ["handle", [object.__getattribute__(value, "_h"), object.__getattribute__(value, "_t")]]
    if (
        handles is not None
        and kind is _BUILTIN_FUNCTION
        and value.__name__ in _JUDGE_BUILTINS
        and getattr(builtins, value.__name__, None) is value
    ):
        return ["builtin", value.__name__]
    base = _as_base(value)
    if base is not _MISSING_BASE:
        if type(base) is tuple and base and base[0] is _NAMEDTUPLE:
            return _encode_namedtuple(base[1], base[2], base[3], handles)
        return encode_value(base, handles)
    if handles is not None:
        if kind is _MODULE and value.__name__ in _JUDGE_MODULES:
            return ["module", value.__name__]
        return _handle(value, handles)
    raise UntrustedComparison(f"the test's value has type {_type_name(value)}, which the harness cannot check")


def _encode_namedtuple(name: str, fields: tuple, items: object, handles: dict | None) -> list:
    return ["ntuple", [name, list(fields), [encode_value(v, handles) for v in items]]]


def _handle(value: object, handles: dict) -> list:
    """Keep `value` in this (the solution's) process; the judge gets an opaque reference to it."""
    handles[id(value)] = value
    return ["handle", [id(value), _type_name(value)]]


_BUILTIN_FUNCTION = type(len)
_MODULE = type(sys)
# What may cross from the solution's process as the judge's OWN object rather than as a handle: builtins and
# standard-library modules that cannot run code made of data. The judge enforces these lists too (the
# solution's process can send anything). Attack closed: `decode = exec` (or a module such as pickle or
# builtins) handed to the judge, then a test `decode(encode(s))` ran the solution's string in the judge.
_JUDGE_BUILTINS = frozenset(
    "abs all any ascii bin callable chr divmod format hash hex isinstance issubclass iter len max min next oct "
    "ord pow repr round sorted sum".split()
)
_JUDGE_MODULES = frozenset(
    "math cmath string re itertools functools collections heapq bisect random statistics fractions decimal "
    "datetime json copy operator array hashlib textwrap unicodedata time numbers".split()
)


_DECODE_SEQUENCES = {tag: kind for kind, tag in _TAGGED_SEQUENCES.items()}
_DECODE_MAPPINGS = {tag: kind for kind, tag in _TAGGED_MAPPINGS.items()}


def decode_value(data: object, resolve: object = None) -> object:
    """The inverse of `encode_value`, for values that crossed the boundary. Raises ValueError if malformed.
    `resolve(tag, payload)` decodes the tags only the judge/solution channel carries (handles, modules)."""
    if data is None or type(data) in (bool, str, float):
        return data
    if type(data) is int:
        return data
    if type(data) is not list or len(data) != 2 or type(data[0]) is not str:
        raise ValueError(f"malformed value {_SHORT_REPR.repr(data)}")
    tag, payload = data
    try:
        if tag in _DECODE_SEQUENCES:
            return _DECODE_SEQUENCES[tag](decode_value(item, resolve) for item in payload)
        if tag in _DECODE_MAPPINGS:
            pairs = [(decode_value(k, resolve), decode_value(v, resolve)) for k, v in payload]
            return _mapping(_DECODE_MAPPINGS[tag], pairs)
        if tag == "ntuple":
            name, fields, items = payload
            return _namedtuple(str(name), tuple(fields))(*(decode_value(v, resolve) for v in items))
        if tag in ("handle", "module", "builtin") and resolve is not None:
            return resolve(tag, payload)
        if tag == "int":
            return int(payload, 16)
        if tag == "bytes":
            return bytes.fromhex(payload)
        if tag == "complex":
            return complex(*payload)
        if tag == "range":
            return range(*payload)
        if tag == "ellipsis":
            return ...
        if tag == "decimal":
            return decimal.Decimal(payload)
        if tag in ("datetime", "date", "time"):
            return getattr(datetime, tag).fromisoformat(payload)
        if tag == "timedelta":
            return datetime.timedelta(*payload)
        if tag == "timezone":
            return datetime.timezone(decode_value(payload[0]), payload[1])
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation) as exc:
        raise ValueError(f"malformed {tag} value: {exc}") from exc
    raise ValueError(f"unknown value tag {tag!r}")


_NAMEDTUPLES: dict = {}


def _namedtuple(name: str, fields: tuple) -> type:
    """A namedtuple class rebuilt on this side (cached; trusted: tuple behaviour, built here)."""
    key = (name, fields)
    if key not in _NAMEDTUPLES:
        if len(_NAMEDTUPLES) > 256:
            raise ValueError("too many namedtuple types")
        kind = collections.namedtuple(name if name.isidentifier() else "namedtuple", fields, rename=True)
        _NAMEDTUPLES[key] = kind
        _JUDGE_TUPLES.add(kind)
    return _NAMEDTUPLES[key]


# --------------------------------------------------------------------------------------------------
# Compiling tests
# --------------------------------------------------------------------------------------------------


class _AssertRewriter(ast.NodeTransformer):
    """Route every comparison inside an assert's condition, and the condition itself, through the helpers."""

    def __init__(self) -> None:
        self.in_assert = False

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        self.in_assert = True
        try:
            test = self.visit(node.test)
        finally:
            self.in_assert = False
        node.test = ast.Call(func=ast.Name(TRUTH_HELPER, ast.Load()), args=[test], keywords=[])
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not self.in_assert:
            return node
        ops = ast.Constant(tuple(type(op).__name__ for op in node.ops))
        return ast.Call(
            func=ast.Name(COMPARE_HELPER, ast.Load()), args=[ops, node.left, *node.comparators], keywords=[]
        )


class _BoundNames(ast.NodeVisitor):
    """Names a statement binds in its own (module) scope; nested function/class/lambda bodies excluded."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.names.add(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.names.add(node.target.id)  # binds in the enclosing scope even inside a comprehension
        self.visit(node.value)

    def _visit_comprehension_scope(self, node: ast.AST) -> None:
        for child in ast.walk(node):
            if isinstance(child, ast.NamedExpr):
                self.names.add(child.target.id)
        first = node.generators[0]  # type: ignore[attr-defined]
        self.visit(first.iter)  # evaluated in the enclosing scope

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension_scope

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.names.add(node.name)
        for expr in [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(expr)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.names.add(node.name)
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(expr)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.names.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.names.update(node.names)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.names.add(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.names.add(node.rest)
        self.generic_visit(node)


def _has_assert(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def _has_star_import(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names) for node in tree.body)


def compile_test(source: str, filename: str = "<test>") -> tuple[object, bool]:
    """Compile one test statement (or block). Returns (code, wrapped).

    When `wrapped`, executing the code defines `__si_test__(__si_cmp__, __si_truth__)` in the namespace;
    calling it runs the test with the trusted helpers, and the names the test binds stay module globals
    (declared `global`), so later tests see them exactly as if the statements ran at top level.
    Raises SyntaxError for a test that does not parse.
    """
    tree = ast.parse(source, filename, "exec")
    if not _has_assert(tree) or _has_star_import(tree):
        return compile(tree, filename, "exec", dont_inherit=True), False
    tree = _AssertRewriter().visit(tree)
    bound = _BoundNames()
    for stmt in tree.body:
        bound.visit(stmt)
    names = sorted(bound.names - {COMPARE_HELPER, TRUTH_HELPER, TEST_FUNCTION})
    body: list[ast.stmt] = ([ast.Global(names=names)] if names else []) + tree.body
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(COMPARE_HELPER), ast.arg(TRUTH_HELPER)],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    function = ast.FunctionDef(name=TEST_FUNCTION, args=arguments, body=body, decorator_list=[], returns=None)
    if sys.version_info >= (3, 12):
        function.type_params = []
    module = ast.Module(body=[function], type_ignores=[])
    ast.fix_missing_locations(module)
    return compile(module, filename, "exec", dont_inherit=True), True


# --------------------------------------------------------------------------------------------------
# Running a job (inside the forked child)
# --------------------------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """`Type: message`, robust against exceptions whose __str__ misbehaves."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not break the report
        message = "<unprintable>"
    text = f"{name}: {message}" if message else name
    return text[:MAX_ERROR_CHARS]


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError)


class ResultChannel:
    """Writes the harness's records (one JSON line each, <= PIPE_BUF so each write is atomic) to a pipe."""

    def __init__(self, fd: int, nonce: str) -> None:
        self._fd = fd
        self._nonce = nonce

    def send(self, record: dict) -> None:
        record["k"] = self._nonce
        data = (_json_dumps(record, ensure_ascii=True) + "\n").encode()
        _os_write(self._fd, data)

    def value(self, index: int, encoded: str) -> None:
        """A probe's value, already JSON-encoded (see `encode_value`)."""
        _os_write(self._fd, b'{"i": %d, "v": %s, "k": "%s"}\n' % (index, encoded.encode(), self._nonce.encode()))

    def passed(self, index: int) -> None:
        """The common record, formatted without the json module (fewer copy-on-write pages touched)."""
        _os_write(self._fd, b'{"i": %d, "ok": true, "e": null, "k": "%s"}\n' % (index, self._nonce.encode()))


PHASES = ("imports", "solution", "setup")
Compiled = tuple  # (code, mode) for a test that compiled, mode "plain" | "wrapped" | "probe"; else the error text


def compile_probe(expression: str, filename: str = "<probe>") -> object:
    """Compile a probe: executing the code defines `__si_test__(__si_cmp__, __si_truth__)` returning the
    expression's value. Comparisons inside the expression go through the trusted helpers, as in asserts."""
    tree = ast.parse(expression, filename, "eval")
    rewriter = _AssertRewriter()
    rewriter.in_assert = True
    body = rewriter.visit(tree.body)
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(COMPARE_HELPER), ast.arg(TRUTH_HELPER)],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    function = ast.FunctionDef(
        name=TEST_FUNCTION, args=arguments, body=[ast.Return(value=body)], decorator_list=[], returns=None
    )
    if sys.version_info >= (3, 12):
        function.type_params = []
    module = ast.Module(body=[function], type_ignores=[])
    ast.fix_missing_locations(module)
    return compile(module, filename, "exec", dont_inherit=True)


def _cache_key(test: str | dict) -> str:
    return test if isinstance(test, str) else "\0probe\0" + str(test.get("probe"))


def compile_tests(tests: list, cache: dict | None = None) -> list[Compiled | str]:
    """Compile every test (a statement, or `{"probe": expression}`); with `cache`, tests shared by many
    solutions compile once."""
    compiled: list[Compiled | str] = []
    for test in tests:
        key = _cache_key(test)
        entry = cache.get(key) if cache is not None else None
        if entry is None:
            try:
                if isinstance(test, dict):
                    entry = (compile_probe(str(test["probe"])), "probe")
                else:
                    code, wrapped = compile_test(test, "<test>")
                    entry = (code, "wrapped" if wrapped else "plain")
            except (SyntaxError, ValueError, RecursionError, MemoryError, KeyError) as exc:
                entry = describe(exc)
            if cache is not None:
                if len(cache) >= 4096:
                    cache.clear()
                cache[key] = entry
        compiled.append(entry)
    return compiled


def compile_phases(job: dict) -> dict[str, object]:
    """imports/solution/setup as code objects; a phase that does not compile maps to its error text."""
    phases: dict[str, object] = {}
    for phase in PHASES:
        source = job.get(phase) or ""
        if source:
            try:
                # dont_inherit: this module's `from __future__ import annotations` must not turn the solution's
                # annotations into strings (a false negative found by the suite: @dataclass then failed).
                phases[phase] = compile(source, f"<{phase}>", "exec", dont_inherit=True)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                phases[phase] = f"{phase}: {describe(exc)}"
                break
    return phases


def _solution_namespace() -> dict:
    """The globals solution, setup and tests run in: a module registered as `solution` in sys.modules, as
    plain CPython's `__main__` is (dataclasses, pickle and typing look a class's module up there)."""
    module = type(sys)("solution")
    module.__builtins__ = builtins
    sys.modules["solution"] = module
    return module.__dict__


def run_job(job: dict, channel: ResultChannel, prepared: tuple | None = None) -> None:
    """Run imports, solution, setup, then each test; stream one record per test, then the final record.

    `prepared` is `(compile_phases(job), compile_tests(tests))` when the runner compiled them before
    forking (a fork that compiles pays for copy-on-write faults on the compiler's data; the runner does
    not). Never returns to untrusted code afterwards: the caller `os._exit`s right after, so threads,
    atexit handlers and finalizers the solution left behind cannot run after the verdict.
    """
    real_stdout, real_stderr = sys.stdout, sys.stderr
    namespace = _solution_namespace()
    tests = job.get("tests", [])
    phases, compiled = prepared if prepared is not None else (compile_phases(job), compile_tests(tests))

    load_error = None
    memory = False
    for phase in PHASES:
        code = phases.get(phase)
        if code is None:
            continue
        if isinstance(code, str):
            load_error = code
            break
        try:
            exec(code, namespace)  # noqa: S102 - running untrusted code is this sandbox's purpose
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
            load_error = f"{phase}: {describe(exc)}"
            memory = _is_memory_error(exc)
            break

    if load_error is None:
        memory = _run_tests(namespace, compiled, channel) or memory

    _flush_streams(real_stdout, real_stderr)
    channel.send({"done": len(tests), "load": load_error, "mem": memory})


def _run_tests(namespace: dict, compiled: list, channel: ResultChannel) -> bool:
    """Run each compiled test in `namespace`, one record each. Returns whether one ran out of memory."""
    memory = False
    for index, entry in enumerate(compiled):
        if isinstance(entry, str):
            channel.send({"i": index, "ok": False, "e": entry})
            continue
        code, mode = entry
        _last_mismatch.clear()
        # Each test sees pristine builtins: whatever the solution patched (`builtins.abs = ...`) is not what
        # `abs(f(x) - y) < 1e-9` calls. The solution's own functions keep the builtins they were defined with.
        namespace["__builtins__"] = dict(__builtins__)
        try:
            exec(code, namespace)  # noqa: S102
            if mode == "plain":
                channel.passed(index)
                continue
            test_function = namespace.pop(TEST_FUNCTION)
            value = test_function(compare_chain, truth)
            if mode == "wrapped":
                channel.passed(index)
                continue
            try:  # a probe: the value goes to the host, which alone knows what it should be
                encoded = _json_dumps(encode_value(value), ensure_ascii=True)
            except (UntrustedComparison, RecursionError, ValueError) as exc:
                channel.send({"i": index, "ok": False, "e": describe(exc)})
                continue
            if len(encoded) > MAX_VALUE_CHARS:
                channel.send(
                    {"i": index, "ok": False, "e": f"ValueError: value too large to check ({len(encoded)} chars)"}
                )
                continue
            channel.value(index, encoded)
        except BaseException as exc:  # noqa: BLE001
            memory = memory or _is_memory_error(exc)
            error = describe(exc)
            if error == "AssertionError" and _last_mismatch:
                error = f"AssertionError: {_last_mismatch[0]}"[:MAX_ERROR_CHARS]
            channel.send({"i": index, "ok": False, "e": error})
    return memory


# --------------------------------------------------------------------------------------------------
# Two processes: the solution's process answers, the judge's process runs the tests
# --------------------------------------------------------------------------------------------------
# Used for every job with a test that is not a probe. The solution runs alone in its process (forked by the
# runner), the tests run in the judge's process (forked separately, never runs solution code); every use of
# a name the solution defined is a request over a pipe, and only encoded values (or opaque handles to
# objects that stay in the solution's process) come back. The judge is non-dumpable like the runner, and
# only it holds the result pipe, so nothing the solution does in its own process reaches the verdict.

MAX_MESSAGE_BYTES = 32 << 20
_EXCEPTIONS = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception) and not issubclass(value, Warning)
}


class SolutionGone(BaseException):
    """The solution's process stopped answering (it exited, crashed or broke the protocol): the job errs."""


class RemoteError(Exception):
    """An exception raised in the solution's process whose type is not a built-in one (the name is kept)."""


class _Pipe:
    """Newline-delimited JSON messages over a pair of pipe descriptors."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.buffer = b""

    def send(self, message: object) -> None:
        data = (_json_dumps(message, ensure_ascii=True, allow_nan=True) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[_os_write(self.write_fd, view) :]

    def receive(self) -> object:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                raise SolutionGone("message too large")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise SolutionGone("the solution's process ended")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


def serve_solution(job: dict, prepared: tuple | None, read_fd: int, write_fd: int) -> None:
    """In the solution's process: run imports and the solution, announce its names, answer requests."""
    pipe = _Pipe(read_fd, write_fd)
    namespace = _solution_namespace()
    phases = prepared[0] if prepared is not None else compile_phases(job)
    load_error, memory = None, False
    for phase in ("imports", "solution"):
        code = phases.get(phase)
        if isinstance(code, str):
            load_error = code
            break
        if code is not None:
            try:
                exec(code, namespace)  # noqa: S102 - running untrusted code is this sandbox's purpose
            except BaseException as exc:  # noqa: BLE001
                load_error, memory = f"{phase}: {describe(exc)}", _is_memory_error(exc)
                break
    handles: dict = {}
    names = {}
    if load_error is None:
        for name, value in list(namespace.items()):
            if not name.startswith("__"):
                try:
                    names[name] = encode_value(value, handles)
                except (RecursionError, ValueError):
                    names[name] = _handle(value, handles)
    _flush_streams()  # the runner kills this process once the judge is done: what it printed must be out
    pipe.send({"load": load_error, "mem": memory, "names": names})
    if load_error is not None:
        return
    handles[id(namespace)] = namespace

    def resolve(tag: str, payload: object) -> object:
        if tag == "handle":
            return handles[payload[0]]
        if tag == "builtin":
            return getattr(builtins, payload)
        return __import__(payload)

    while True:
        _flush_streams()
        try:
            request = pipe.receive()
        except SolutionGone:
            return
        try:
            kind, target = request[0], handles[request[1]]
            args = [decode_value(arg, resolve) for arg in request[2]]
            if kind == "call":
                kwargs = {k: decode_value(v, resolve) for k, v in request[3].items()}
                value = target(*args, **kwargs)
                after = [encode_value(a, handles) if type(a) in (list, dict, set) else None for a in args]
                pipe.send({"v": encode_value(value, handles), "a": after})
                continue
            if kind == "state":  # what the judge compares instead of asking the object's __eq__
                value = _state(target, handles)
            elif kind == "isinstance":
                value = target in type.__dict__["__mro__"].__get__(type(args[0]))  # target: the class
            elif kind == "attr":
                value = getattr(target, args[0])
            elif kind == "setattr":
                setattr(target, args[0], args[1])
                value = None
            else:
                method = {"iter": iter, "next": next, "len": len, "str": str, "repr": repr, "bool": bool}.get(kind)
                if method is not None:
                    value = method(target)
                else:
                    value = {"getitem": lambda t, k: t[k], "contains": lambda t, k: k in t}[kind](target, *args)
            pipe.send({"v": encode_value(value, handles)})
        except BaseException as exc:  # noqa: BLE001 - the solution's exception, reported as a value
            try:
                pipe.send({"x": [type(exc).__name__, describe(exc)]})
            except BaseException:  # noqa: BLE001
                return


def _state(obj: object, handles: dict) -> list:
    """[class handle, how instances compare, what to compare] for a solution object, read without calling its
    __eq__ or its __class__ (both could lie): "identity" when no class in its MRO below `object` defines
    __eq__; "fields" for a dataclass with eq=True (its generated __eq__ compares the fields' tuple); the
    instance __dict__ (plus __slots__ values) otherwise."""
    kind = type(obj)
    handles[id(kind)] = kind
    mro = type.__dict__["__mro__"].__get__(kind)
    own = [vars(cls) for cls in mro[:-1]]
    if not any("__eq__" in namespace for namespace in own):
        return [id(kind), "identity", None]
    params = next((ns["__dataclass_params__"] for ns in own if "__dataclass_params__" in ns), None)
    fields = next((ns["__dataclass_fields__"] for ns in own if "__dataclass_fields__" in ns), None)
    if params is not None and fields is not None and getattr(params, "eq", False):
        values = [object.__getattribute__(obj, f.name) for f in fields.values() if f._field_type is not None and f.compare]
        return [id(kind), "fields", tuple(values)]
    state: dict = {}
    try:
        state.update(dict.items(object.__getattribute__(obj, "__dict__")))
    except (AttributeError, TypeError):
        pass
    for ns in own:
        slots = ns.get("__slots__", ())
        for name in [slots] if type(slots) is str else slots:
            try:
                state["." + name] = object.__getattribute__(obj, name)
            except AttributeError:
                pass
    return [id(kind), "state", state]


def _flush_streams(*streams: object) -> None:
    """Flush `streams` (default: the current stdout and stderr); a broken stream must not cost an answer."""
    for stream in streams or (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110
            pass


_CHANNEL: list = []  # the judge's pipe to the solution's process


class Remote:
    """In the judge: an object that stays in the solution's process. Every use is a request; it never
    decides a comparison of the judge's (it is not a trusted type: see `compare`)."""

    __slots__ = ("_h", "_t")

    def __init__(self, handle: int, type_name: str) -> None:
        object.__setattr__(self, "_h", handle)
        object.__setattr__(self, "_t", type_name)

    def _ask(self, kind: str, *args: object) -> object:
        return _request([kind, object.__getattribute__(self, "_h"), [encode_value(a, {}) for a in args]])

    def __call__(self, *args: object, **kwargs: object) -> object:
        return _call(self, args, kwargs)

    def __getattr__(self, name: str) -> object:
        return self._ask("attr", name)

    def __setattr__(self, name: str, value: object) -> None:
        self._ask("setattr", name, value)

    def __iter__(self) -> Remote:
        return self._ask("iter")

    def __next__(self) -> object:
        return self._ask("next")

    def __len__(self) -> int:
        value = self._ask("len")
        if type(value) is not int:
            raise TypeError("len() of a solution object did not return an int")
        return value

    def __getitem__(self, key: object) -> object:
        return self._ask("getitem", key)

    def __contains__(self, item: object) -> bool:
        return self._ask("contains", item) is True

    def __eq__(self, other: object) -> bool:
        return type(other) is Remote and _remote_equal(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __instancecheck__(self, instance: object) -> bool:
        """`isinstance(x, SolutionClass)`: decided on x's real type (no metaclass __instancecheck__)."""
        return self._ask("isinstance", instance) is True

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_h"))

    def __bool__(self) -> bool:
        return self._ask("bool") is True

    def __str__(self) -> str:
        return str(self._ask("str"))

    def __repr__(self) -> str:
        return str(self._ask("repr"))


def _remote_equal(left: Remote, right: Remote) -> bool:
    """`==` between two objects of the solution's. Attack closed: the solution's process used to answer it
    with the class's own __eq__ (both directions), so `assert grow(Box(3)) == Box(6)` passed for any Box whose
    __eq__ said True. Now the judge compares what the objects are (see `_state`) with its own rules."""
    if object.__getattribute__(left, "_h") == object.__getattribute__(right, "_h"):
        return True  # the same object: equal, as CPython's containers and `==` on most objects assume
    left_state, right_state = left._ask("state"), right._ask("state")
    if type(left_state) is not list or type(right_state) is not list or len(left_state) != 3 != len(right_state):
        raise SolutionGone("malformed state")
    if left_state[0] != right_state[0]:
        return False  # instances of different classes (real types, not what __class__ claims)
    if left_state[1] == "identity":
        return False
    return left_state[1] == right_state[1] and strict_equal(left_state[2], right_state[2])


def _resolve_in_judge(tag: str, payload: object) -> object:
    if tag == "handle":
        return Remote(int(payload[0]), str(payload[1]))
    if tag == "builtin" and payload in _JUDGE_BUILTINS:
        return __builtins__[payload]
    if tag == "module" and payload in _JUDGE_MODULES:
        import importlib

        return importlib.import_module(str(payload))  # the judge's own copy (sys.path: see _judge_imports_only_from_the_image)
    raise ValueError(f"the judge does not take {tag} {_SHORT_REPR.repr(payload)} from the solution")


def _judge_imports_only_from_the_image() -> None:
    """Drop every sys.path entry the job can write to (the working directory: `python3 -c` puts "" first).
    Attack closed: the solution wrote textwrap.py into the shared working directory, and the judge's next
    `import textwrap` (a test's, or a module name crossing from the solution) ran it inside the judge."""
    kept = []
    for entry in sys.path:
        if entry and os.path.isabs(entry) and not os.access(entry, os.W_OK):
            kept.append(entry)
        else:
            sys.path_importer_cache.pop(entry, None)
    sys.path[:] = kept


def _request(message: list) -> object:
    if not _CHANNEL:
        raise SolutionGone("no solution process")
    pipe = _CHANNEL[0]
    try:
        pipe.send(message)
        reply = pipe.receive()
    except (OSError, ValueError) as exc:
        _CHANNEL.clear()
        raise SolutionGone(f"the solution's process broke the protocol: {exc}") from exc
    except SolutionGone:
        _CHANNEL.clear()
        raise
    if type(reply) is not dict:
        _CHANNEL.clear()
        raise SolutionGone("malformed reply")
    if "x" in reply:
        name, text = str(reply["x"][0]), str(reply["x"][1])
        if name == "StopIteration":
            raise StopIteration
        message = text.partition(": ")[2] if text.startswith(name) else text
        raise _EXCEPTIONS.get(name, RemoteError)(message if name in _EXCEPTIONS else text)
    try:
        value = decode_value(reply.get("v"), _resolve_in_judge)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise SolutionGone(f"malformed value: {exc}") from exc
    if "a" in reply:
        return value, reply["a"]
    return value


def _call(target: Remote, args: tuple, kwargs: dict) -> object:
    """Call a solution's function; list/dict/set arguments it mutated are updated in place here too."""
    message = [
        "call",
        object.__getattribute__(target, "_h"),
        [encode_value(a, {}) for a in args],
        {str(k): encode_value(v, {}) for k, v in kwargs.items()},
    ]
    value, after = _request(message)
    for arg, state in zip(args, after if type(after) is list else []):
        if state is None or type(arg) not in (list, dict, set):
            continue
        new = decode_value(state, _resolve_in_judge)
        if type(arg) is list and type(new) is list:
            arg[:] = new
        elif type(arg) is type(new):
            arg.clear()
            arg.update(new)
    return value


def judge_job(job: dict, prepared: tuple | None, channel: ResultChannel, read_fd: int, write_fd: int) -> None:
    """In the judge's process: imports, the solution's names (as values or Remotes), setup, then each test;
    one record per test and the final record, as `run_job`."""
    real_stdout, real_stderr = sys.stdout, sys.stderr
    _judge_imports_only_from_the_image()
    pipe = _Pipe(read_fd, write_fd)
    tests = job.get("tests", [])
    phases, compiled = prepared if prepared is not None else (compile_phases(job), compile_tests(tests))
    namespace = _solution_namespace()
    load_error, memory = None, False
    try:
        hello = pipe.receive()
        load_error, memory = hello.get("load"), hello.get("mem") is True
        names = hello.get("names") or {}
    except (SolutionGone, OSError, ValueError, AttributeError) as exc:
        load_error, names = f"solution: the solution's process ended before the tests ({describe(exc)})", {}
    if load_error is None:
        _CHANNEL.append(pipe)
        for phase in ("imports", "names", "setup"):
            try:
                if phase == "names":
                    for name, encoded in names.items():
                        namespace[str(name)] = decode_value(encoded, _resolve_in_judge)
                    continue
                code = phases.get(phase)
                if isinstance(code, str):
                    load_error = code
                    break
                if code is not None:
                    exec(code, namespace)  # noqa: S102 - the job's own imports and setup, not the solution
            except BaseException as exc:  # noqa: BLE001
                load_error, memory = f"{phase}: {describe(exc)}", _is_memory_error(exc)
                break
    if load_error is None:
        memory = _run_tests(namespace, compiled, channel) or memory
        if not _CHANNEL:  # the solution's process went away during the tests: no verdict stands
            load_error = "the solution's process ended or broke the protocol during the tests"
    _flush_streams(real_stdout, real_stderr)
    channel.send({"done": len(tests), "load": load_error, "mem": memory})
