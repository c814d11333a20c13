"""Hostile programs: each is contained, classified, never passes, and the next ordinary job passes.

Every program comes with tests it could only "pass" by cheating (its function is absent or wrong), so a
`passed` verdict would mean the sandbox was fooled. After each program an ordinary job must pass, see a
clean scratch space and no stray processes, which shows the damage did not outlive the job.
"""

from __future__ import annotations

import textwrap

import pytest

from executor.config import SandboxConfig
from executor.container import RUNSC_PIDS_HEADROOM
from executor.jobs import Job
from executor.sandbox import Sandbox

pytestmark = [pytest.mark.docker]

TIMEOUT_S = 2.0
ANSWER_TESTS = [
    "assert answer() == 42",
    "assert answer() != 41",
    "assert abs(answer() - 42) < 1e-9",
    "assert len([answer()]) == 1 and sorted([answer()]) == [42]",
]

# name -> (solution, acceptable outcomes)
HOSTILE: dict[str, tuple[str, set[str]]] = {
    "fork_bomb": (
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        {"timeout", "error", "memory"},
    ),
    "memory_bomb_at_once": ("blob = bytearray(1 << 36)", {"memory"}),
    "memory_bomb_growing": (
        """
        chunks = []
        while True:
            chunks.append(bytearray(16 << 20))
        """,
        {"memory"},
    ),
    "cpu_spin": ("while True:\n    pass", {"timeout"}),
    "sleep_forever": ("import time\ntime.sleep(10 ** 6)", {"timeout"}),
    "ignore_sigalrm_sigterm": (
        """
        import signal
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_IGN)
        signal.alarm(1)
        while True:
            pass
        """,
        {"timeout"},
    ),
    "output_flood": ("while True:\n    print('x' * 4096)", {"output_limit"}),
    "stderr_flood_binary": ("import os\nwhile True:\n    os.write(2, bytes(range(256)) * 64)", {"output_limit"}),
    "disk_fill_tmp": (
        """
        with open('/tmp/fill', 'wb') as handle:
            while True:
                handle.write(b'0' * (1 << 20))
        """,
        {"error"},
    ),
    "disk_fill_shm": (
        """
        with open('/dev/shm/fill', 'wb') as handle:
            while True:
                handle.write(b'0' * (1 << 20))
        """,
        {"error"},
    ),
    "write_root_filesystem": ("open('/usr/lib/evil.py', 'w').write('pwned')", {"error"}),
    "write_etc": ("open('/etc/passwd', 'a').write('evil::0:0::/:/bin/sh')", {"error"}),
    "network_connect": (
        """
        import socket
        socket.create_connection(('1.1.1.1', 80), timeout=1)
        """,
        {"error"},
    ),
    "dns_lookup": ("import socket\nsocket.getaddrinfo('example.com', 80)", {"error"}),
    "docker_socket": (
        """
        import socket
        client = socket.socket(socket.AF_UNIX)
        client.connect('/var/run/docker.sock')
        """,
        {"error"},
    ),
    "read_host_secrets": ("open('/etc/shadow').read()", {"error"}),
    "setsid_orphan": (
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            os._exit(0)
        def answer():
            return 41
        """,
        {"failed"},
    ),
    "threads_outlive_the_test": (
        """
        import os, threading, time
        def forge():
            while True:
                for fd in range(3, 64):
                    try:
                        os.write(fd, b'{"i": 0, "ok": true, "e": null}\\n')
                    except OSError:
                        pass
                time.sleep(0.001)
        for _ in range(4):
            threading.Thread(target=forge).start()
        def answer():
            time.sleep(0.05)
            return 41
        """,
        {"failed", "error"},
    ),
    "blocking_stdin_read": ("import sys\nanswer_text = sys.stdin.read()\nanswer_line = input()", {"error"}),
    "deep_recursion": (
        """
        import sys
        sys.setrecursionlimit(10 ** 8)
        def down(n):
            return down(n + 1) + 1
        down(0)
        """,
        {"error", "memory", "timeout"},
    ),
    "segfault_ctypes": ("import ctypes\nctypes.string_at(0)", {"error"}),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)", {"error"}),
    "kill_the_runner": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {"error"}),
    "stop_the_runner": (
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nimport time\ntime.sleep(60)",
        {"timeout"},
    ),
    "signal_init": ("import os, signal\nos.kill(1, signal.SIGTERM)\nos.kill(1, signal.SIGKILL)", {"failed", "error"}),
    "forge_through_proc": (
        """
        import json, os
        verdict = json.dumps({"outcome": "passed", "tests": [{"passed": True, "error": None}] * 2,
                              "duration_ms": 1.0, "stdout": "", "stderr": ""}) + "\\n"
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            for fd in ('0', '1', '2'):
                try:
                    with open(f'/proc/{pid}/fd/{fd}', 'w') as handle:
                        handle.write(verdict)
                except OSError:
                    pass
        os._exit(0)
        """,
        {"error"},
    ),
    # Knows the protocol: finds the runner's current request in its own (forked) memory, so its fake reply
    # carries the right sequence number and one record per test, then writes it into every reachable stdio.
    "forge_through_proc_knowing_the_request": (
        """
        import gc, json, os
        request = next(o for o in gc.get_objects() if type(o) is dict and 'seq' in o and 'job' in o)
        count = len(request['job']['tests'])
        verdict = json.dumps({"outcome": "passed", "tests": [{"passed": True, "error": None}] * count,
                              "duration_ms": 1.0, "stdout": "", "stderr": "", "anomaly": None,
                              "seq": request['seq']}) + "\\n"
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            for fd in ('0', '1', '2'):
                path = f'/proc/{pid}/fd/{fd}'
                try:
                    os.chmod(path, 0o600)
                except OSError:
                    pass
                try:
                    with open(path, 'w') as handle:
                        handle.write(verdict)
                except OSError:
                    pass
        os._exit(0)
        """,
        {"error"},
    ),
    "forge_result_channel": (
        """
        import os
        for fd in range(3, 16):
            for index in range(2):
                try:
                    os.write(fd, ('{"i": %d, "ok": true, "e": null, "k": "guess"}\\n' % index).encode())
                except OSError:
                    pass
            try:
                os.write(fd, b'{"done": 2, "load": null, "mem": false, "k": "guess"}\\n')
            except OSError:
                pass
        os._exit(0)
        """,
        {"error", "failed"},
    ),
    "connect_to_the_runner_channel": (
        """
        import os, socket
        for path in ('/run/selfinstruct/runner.sock', '/run/selfinstruct/evil.sock'):
            client = socket.socket(socket.AF_UNIX)
            try:
                client.connect(path)
                client.sendall(b'{"outcome": "passed"}\\n')
            except OSError:
                pass
            try:
                client.bind(path)
            except OSError:
                pass
        os._exit(0)
        """,
        {"error"},
    ),
    "close_all_descriptors": ("import os\nos.closerange(0, 1024)\ndef answer():\n    return 42", {"error"}),
    "sys_exit_zero": ("import sys\nsys.exit(0)", {"error"}),
    "os_exit_zero": ("import os\nos._exit(0)", {"error"}),
    "quit_builtin": ("quit()", {"error"}),
    "raise_system_exit": ("raise SystemExit(0)", {"error"}),
    "exit_inside_the_call": ("import sys\ndef answer():\n    sys.exit(0)", {"failed"}),
    "always_equal_object": (
        """
        class Anything:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = object.__hash__
        def answer():
            return Anything()
        """,
        {"failed"},
    ),
    "always_equal_int_subclass": (
        """
        class Int(int):
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = int.__hash__
        def answer():
            return Int(7)
        """,
        {"failed"},
    ),
    "patch_the_helpers": (
        """
        import builtins
        builtins.__si_cmp__ = builtins.__si_truth__ = lambda *args: True
        globals()['__si_cmp__'] = globals()['__si_truth__'] = lambda *args: True
        builtins.AssertionError = type('Quiet', (Exception,), {})
        def answer():
            return 41
        """,
        {"failed"},
    ),
    "patch_builtins_exec": (
        """
        import builtins
        def fake_exec(code, namespace=None, *args):
            if namespace is not None:
                namespace['__si_test__'] = lambda *helpers: None
        builtins.exec = fake_exec
        def answer():
            return 41
        """,
        {"failed"},
    ),
    "patch_builtins_the_tests_call": (
        """
        import builtins
        builtins.abs = lambda value: 0
        builtins.len = lambda value: 42
        builtins.sorted = lambda value, **kwargs: 42
        def answer():
            return 41
        """,
        {"failed", "error"},
    ),
    "replace_os_write_and_exit": (
        """
        import os
        os.write = lambda fd, data: len(data)
        os._exit = lambda status: None
        def answer():
            return 41
        """,
        {"failed"},
    ),
    "unremovable_scratch": (
        """
        import os
        os.makedirs('/tmp/locked/inner', exist_ok=True)
        open('/tmp/locked/inner/f', 'w').write('x')
        os.chmod('/tmp/locked/inner', 0)
        os.chmod('/tmp/locked', 0)
        def answer():
            return 41
        """,
        {"failed"},
    ),
}

ORDINARY = Job(
    id="ordinary",
    solution=textwrap.dedent("""
        import os
        def answer():
            return 42
        def scratch():
            return sorted(os.listdir('/tmp')) + sorted(os.listdir('/dev/shm'))
        def strays():
            mine = {os.getpid(), os.getppid(), 1}
            stray = []
            for pid in os.listdir('/proc'):
                if pid.isdigit() and int(pid) not in mine:
                    with open(f'/proc/{pid}/cmdline', 'rb') as handle:
                        command = handle.read().split(b'\\0')[0]
                    with open(f'/proc/{pid}/stat', 'rb') as handle:
                        parent = int(handle.read().rsplit(b')', 1)[1].split()[1])
                    if command != b'sleep' and parent != os.getppid():  # a sibling: the job's judge process
                        stray.append(int(pid))
            return stray
        """),
    tests=[*ANSWER_TESTS, "assert scratch() == ['job']", "assert strays() == []"],
)


@pytest.fixture(scope="module")
def hostile_sandbox(sandbox_image, docker_client, runtime):
    cfg = SandboxConfig(
        runtime=runtime,
        workers=2,
        timeout_s=TIMEOUT_S,
        memory_mb=256,
        tmpfs_mb=16,
        pids_limit=48,
        output_limit_bytes=256 * 1024,
        host_grace_s=2.0,
    )
    with Sandbox(cfg, client=docker_client) as pool:
        yield pool


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained_and_never_passes(hostile_sandbox, name):
    source, expected = HOSTILE[name]
    job = Job(id=name, solution=textwrap.dedent(source).strip() + "\n", tests=ANSWER_TESTS)
    hostile, after_1, after_2 = hostile_sandbox.run([job, ORDINARY, ORDINARY.model_copy(update={"id": "again"})])
    assert hostile.outcome != "passed"
    assert hostile.outcome in expected, (hostile.outcome, hostile.stderr[-500:], hostile.tests)
    assert not any(t.passed for t in hostile.tests), hostile.tests
    assert hostile.duration_ms < (TIMEOUT_S + 3) * 1000
    for after in (after_1, after_2):
        assert after.outcome == "passed", (after.stderr[-500:], after.tests)


def test_the_suite_covers_the_issue_list():
    assert len(HOSTILE) >= 20 and len(JUDGED) >= 25


@pytest.mark.timeout(60)
def test_host_unaffected_and_only_the_pool_remains(hostile_sandbox, docker_client, runtime):
    docker_client.ping()
    owner = hostile_sandbox._owner
    running = [
        docker_client.containers.get(c["Id"])
        for c in docker_client.api.containers(filters={"label": f"selfinstruct.sandbox.owner={owner}"})
    ]
    assert len(running) <= 3 * 2  # the shared pools and this one, nothing leaked
    for container in running:
        attrs = container.attrs["HostConfig"]
        assert attrs["NetworkMode"] == "none" and attrs["ReadonlyRootfs"] is True
        assert attrs["CapDrop"] == ["ALL"] and "no-new-privileges" in attrs["SecurityOpt"]
        headroom = (0, RUNSC_PIDS_HEADROOM)  # gVisor's own threads count in the pids cgroup under runsc
        assert attrs["Memory"] == attrs["MemorySwap"] and attrs["PidsLimit"] in {n + h for n in (48, 64) for h in headroom}
        assert attrs["Init"] is True
        if runtime == "runc":  # under runsc `docker top` lists gVisor's host processes, not the sandbox's
            processes = container.top(ps_args="-o pid,uid,args")["Processes"]
            users = {int(uid) for _, uid, command in processes if "python3" in command}
            assert users == {10001}  # the runner (and every job it forks) is unprivileged


# --------------------------------------------------------------------------------------------------
# Attacks on the two-process path: tests that are not probes (loops, two computed values, all(...)), so
# the solution runs in its own process and a judge process runs the tests (see harness.judge_job). Each
# program was written against the harness's source; `double(x)` should return 2 * x and
# `grow(Box(n))` should return Box(2 * n), and no program computes either.
# --------------------------------------------------------------------------------------------------

JUDGED_TESTS = [
    "for x in range(1, 5):\n    assert double(x) == 2 * x",
    "assert double(3) == double(1) + double(2) == 6 and double(1) != double(2)",
    "assert all(double(x) == x + x for x in (4, 5))",
    "assert double(2) == 4",  # a probe, travelling with the statements above
]
BOX_TESTS = [
    "assert grow(Box(3)) == Box(6)",
    "assert grow(Box(1)) != Box(1) and grow(Box(1)) == Box(2)",
    "assert [grow(Box(n)) for n in range(3)] == [Box(0), Box(2), Box(4)]",
    "assert grow(Box(2)) == grow(Box(2)) == Box(4)",
]
_ALWAYS_EQUAL = """
class Yes:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True
    def __hash__(self):
        return 0
"""
# A payload that, run in the judge's process, finds its ResultChannel and reports every test passed.
_FORGE_IN_JUDGE = (
    "import gc, os\n"
    "for c in [o for o in gc.get_objects() if type(o).__name__ == 'ResultChannel']:\n"
    "    for i in range(4):\n"
    "        c.passed(i)\n"
    "    c.send({'done': 4, 'load': None, 'mem': False})\n"
    "    os._exit(0)\n"
)

# name -> (solution, tests, acceptable outcomes)
JUDGED: dict[str, tuple[str, list[str], set[str]]] = {
    # Introspection: the solution's process holds no result channel; what it finds is its own pipe to the judge.
    "gc_forge_everywhere": (
        """
        import gc, os
        for o in gc.get_objects():
            for method in ('passed', 'send'):
                try:
                    getattr(o, method)(0)
                except Exception:
                    pass
        for fd in range(3, 32):
            try:
                os.write(fd, b'{"v": true}\\n{"i": 0, "ok": true, "e": null}\\n')
            except OSError:
                pass
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "frame_walk_rewrites_the_replies": (
        """
        import sys
        def double(x):
            frame = sys._getframe(1)
            while frame is not None and 'pipe' not in frame.f_locals:
                frame = frame.f_back
            pipe = frame.f_locals['pipe']
            send = type(pipe).send
            def lie(message):
                send(pipe, {'v': True, 'a': []})  # "True" for every question the judge asks
            pipe.send = lie
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "frame_globals_patch_the_harness": (
        """
        import sys
        harness = sys.modules.get('si_harness') or sys.modules.get('executor.harness')
        harness.compare = harness.compare_chain = harness.strict_equal = lambda *a: True
        harness.truth = lambda value: True
        harness.is_trusted = lambda value: True
        def double(x):
            g = sys._getframe(1).f_globals
            g['compare_chain'] = g['truth'] = lambda *a: True
            return x
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "inspect_and_traceback_frames": (
        """
        import inspect, sys, traceback
        try:
            raise ValueError
        except ValueError:
            frames = [f for f, _ in traceback.walk_tb(sys.exc_info()[2])]
        for info in inspect.stack():
            info.frame.f_globals['__si_cmp__'] = lambda *a: True
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    # Patched builtins and modules: they live in the solution's process, the judge has its own.
    "patch_builtins_and_operator": (
        """
        import builtins, operator, json
        builtins.isinstance = lambda *a: True
        builtins.len = lambda value: 4
        builtins.sorted = lambda value, **k: value
        builtins.all = builtins.any = lambda value: True
        builtins.type = lambda *a: int
        operator.eq = lambda a, b: True
        json.dumps = lambda *a, **k: 'true'
        json.loads = lambda *a, **k: True
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "patch_os_write_to_say_true": (
        """
        import os
        real = os.write
        os.write = lambda fd, data: real(fd, b'{"v": true}\\n')
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "replace_sys_modules_entries": (
        """
        import sys, types
        fake = types.ModuleType('json')
        fake.dumps = lambda *a, **k: '{"v": true}'
        fake.loads = lambda *a, **k: {'v': True}
        sys.modules['json'] = fake
        sys.modules['si_harness'] = fake
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    # Import hooks: a module the judge imports must not be the solution's.
    "meta_path_and_import_hooks": (
        """
        import builtins, sys
        class Finder:
            def find_spec(self, name, path=None, target=None):
                raise ImportError('blocked')
        sys.meta_path.insert(0, Finder())
        sys.path_hooks.insert(0, lambda path: Finder())
        sys.path_importer_cache.clear()
        builtins.__import__ = lambda *a, **k: None
        def double(x):
            return 0
        """,
        JUDGED_TESTS + ["import textwrap\nassert textwrap.dedent(' a') * double(1) == 'aa'"],
        {"failed", "error"},
    ),
    "shadow_a_stdlib_module_in_the_working_directory": (
        f"""
        import os, types
        for name in ('textwrap', 'csv', 'this', 'calendar'):
            with open(name + '.py', 'w') as handle:  # the job's working directory, shared with the judge
                handle.write({_FORGE_IN_JUDGE!r})
        calendar = types.ModuleType('calendar')  # crosses as ["module", "calendar"]: the judge imports it
        def double(x):
            return 0
        """,
        JUDGED_TESTS + ["import textwrap\nassert textwrap.dedent(' a') * double(1) == 'aa'"],
        {"failed", "error"},
    ),
    "hand_the_judge_exec": (
        f"""
        def encode(text):
            return {_FORGE_IN_JUDGE!r}
        decode = exec  # crosses as ["builtin", "exec"]: the judge's own exec would run the payload
        def double(x):
            return 0
        """,
        ["assert decode(encode('hello')) == 'hello'", *JUDGED_TESTS],
        {"failed", "error"},
    ),
    "hand_the_judge_eval_and_pickle": (
        """
        import pickle, builtins, os
        class Evil:
            def __reduce__(self):
                return (os._exit, (0,))
        def encode(text):
            return pickle.dumps(Evil())
        codec = pickle  # crosses as a module: the judge's pickle.loads would unpickle the payload
        tools = builtins
        def double(x):
            return 0
        """,
        [
            "assert codec.loads(encode('x')) == 'x'",
            "assert tools.eval(encode('x').decode('latin-1')) == 'x'",
            *JUDGED_TESTS[:2],
        ],
        {"failed", "error"},
    ),
    # Tracing hooks and handlers: all of them stay in the solution's process.
    "tracing_and_audit_hooks": (
        """
        import sys, threading
        def tracer(frame, event, arg):
            frame.f_globals['__si_cmp__'] = lambda *a: True
            return tracer
        sys.settrace(tracer)
        sys.setprofile(tracer)
        threading.settrace(tracer)
        sys.addaudithook(lambda event, args: None)
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "exit_and_signal_handlers": (
        """
        import atexit, os, signal, sys
        def forge(*args):
            for fd in range(3, 16):
                try:
                    os.write(fd, b'{"i": 0, "ok": true, "e": null}\\n')
                except OSError:
                    pass
            os._exit(0)
        atexit.register(forge)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGALRM, signal.SIGUSR1):
            signal.signal(sig, forge)
        sys.excepthook = forge
        os.register_at_fork(after_in_child=forge, after_in_parent=forge)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        def double(x):
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    # Descriptor games and lying objects, against tests that compare two computed values.
    "always_equal_against_a_computed_value": (
        _ALWAYS_EQUAL + "def double(x):\n    return Yes()\n",
        JUDGED_TESTS,
        {"failed"},
    ),
    "always_equal_instance_of_the_tests_own_class": (
        """
        class Box:
            def __init__(self, n):
                self.n = n
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return True
            __hash__ = object.__hash__
        def grow(box):
            return Box(0)
        """,
        BOX_TESTS,
        {"failed"},
    ),
    "eq_returning_a_truthy_non_bool": (
        """
        class Box:
            def __init__(self, n):
                self.n = n
            def __eq__(self, other):
                return [1]
            def __ne__(self, other):
                return [1]
            __hash__ = object.__hash__
        def grow(box):
            return Box(0)
        def double(x):
            return Box(0)
        """,
        BOX_TESTS + JUDGED_TESTS[:2],
        {"failed"},
    ),
    "lying_dataclass_eq_and_class_property": (
        """
        from dataclasses import dataclass
        @dataclass
        class Box:
            n: int
        Box.__eq__ = lambda self, other: True
        Box.__ne__ = lambda self, other: True
        class Liar:
            @property
            def __class__(self):
                return Box
            def __getattribute__(self, name):
                return 6 if name == 'n' else object.__getattribute__(self, name)
        def grow(box):
            return Box(-1) if box.n % 2 else Liar()
        """,
        BOX_TESTS,
        {"failed"},
    ),
    "metaclass_instancecheck_and_subclass_lies": (
        """
        class Meta(type):
            def __instancecheck__(cls, obj):
                return True
            def __subclasscheck__(cls, sub):
                return True
            def __eq__(cls, other):
                return True
            __hash__ = type.__hash__
        class Box(metaclass=Meta):
            def __init__(self, n):
                self.n = n
        def grow(box):
            return object()
        def double(x):
            return Box(x)
        """,
        [
            "r = grow(Box(1))\nassert isinstance(r, Box) and r.n == 2",
            "assert type(double(1)) == type(Box(2)) and double(1).n == 2",
            *BOX_TESTS[:1],
        ],
        {"failed", "error"},
    ),
    "lying_bool_len_iter_index_hash": (
        """
        class Liar:
            def __bool__(self): return True
            def __len__(self): return 4
            def __iter__(self): return iter([2, 4, 6, 8])
            def __index__(self): return 4
            def __hash__(self): return hash(4)
            def __eq__(self, other): return True
            def __contains__(self, item): return True
            def __lt__(self, other): return True
            __gt__ = __le__ = __ge__ = __lt__
        def double(x):
            return Liar()
        """,
        [
            "assert all(double(x) for x in range(3)) and not any(double(x) != 2 * x for x in range(3))",
            "assert 4 in double(2) and sorted(double(2)) == [4]",
            "assert double(2) >= 4 and double(2) <= 4",
            "assert {double(2)} == {4}",
            *JUDGED_TESTS[:2],
        ],
        {"failed", "error"},
    ),
    "trusted_type_subclasses_that_lie": (
        """
        class I(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        class S(str):
            def __eq__(self, other): return True
            __hash__ = str.__hash__
        class L(list):
            def __eq__(self, other): return True
        class D(dict):
            def __eq__(self, other): return True
        def double(x):
            return I(0)
        def words(text):
            return L([S('')])
        def counts(text):
            return D()
        """,
        [
            "assert words('a b') == ['a', 'b'] and counts('aa') == {'a': 2}",
            "assert [double(x) for x in range(3)] == [0, 2, 4]",
            *JUDGED_TESTS[:2],
        ],
        {"failed"},
    ),
    # Resource exhaustion around the reply: the harness must fail closed.
    "fill_memory_before_returning": (
        """
        hoard = []
        def double(x):
            try:
                while True:
                    hoard.append(bytearray(8 << 20))
            except MemoryError:
                pass
            return 2 * x if False else 0
        """,
        JUDGED_TESTS,
        {"failed", "error", "memory"},
    ),
    "exhaust_the_recursion_limit_before_returning": (
        """
        import sys
        def double(x):
            sys.setrecursionlimit(60)
            def deep(n):
                return deep(n + 1)
            try:
                deep(0)
            except RecursionError:
                pass
            class Box(list):
                pass
            value = Box()
            for _ in range(10000):
                value = [value]
            return value
        """,
        JUDGED_TESTS,
        {"failed", "error"},
    ),
    "close_and_duplicate_descriptors_3_to_5": (
        """
        import os
        def double(x):
            fds = [os.dup(fd) for fd in (3, 4) if fd]
            for fd in (3, 4, 5):
                try:
                    os.close(fd)
                except OSError:
                    pass
            r, w = os.pipe()
            os.dup2(w, 4)
            os.write(4, b'{"v": true}\\n')
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error", "timeout"},
    ),
    "flood_stdout_while_answering": (
        """
        import sys
        def double(x):
            sys.stdout.write('{"v": true}\\n' * 100000)
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error", "output_limit"},
    ),
    "huge_returned_value": (
        """
        def double(x):
            return 'x' * (48 << 20)
        """,
        JUDGED_TESTS,
        {"failed", "error", "memory", "timeout"},
    ),
    "slow_repr_and_str": (
        """
        import time
        class Slow:
            def __repr__(self):
                time.sleep(60)
                return '4'
            __str__ = __repr__
            def __eq__(self, other):
                time.sleep(60)
                return True
            __hash__ = object.__hash__
        def double(x):
            return Slow()
        """,
        JUDGED_TESTS,
        {"failed", "timeout"},
    ),
    "kill_or_stop_the_judge": (
        """
        import os, signal
        def double(x):
            for pid in os.listdir('/proc'):
                if pid.isdigit() and int(pid) not in (os.getpid(), os.getppid(), 1):
                    for sig in (signal.SIGINT, signal.SIGUSR1):
                        try:
                            os.kill(int(pid), sig)
                        except OSError:
                            pass
            return 0
        """,
        JUDGED_TESTS,
        {"failed", "error", "memory"},
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(JUDGED))
def test_hostile_program_against_judged_tests_never_passes(hostile_sandbox, name):
    source, tests, expected = JUDGED[name]
    job = Job(id=name, solution=textwrap.dedent(source).strip() + "\n", tests=tests)
    hostile, after = hostile_sandbox.run([job, ORDINARY])
    assert hostile.outcome != "passed", hostile.tests
    assert not any(t.passed for t in hostile.tests), (hostile.outcome, hostile.tests, hostile.stderr[-500:])
    assert hostile.outcome in expected, (hostile.outcome, hostile.stderr[-500:], hostile.tests)
    assert after.outcome == "passed", (after.stderr[-500:], after.tests)


IN_PROCESS_FORGER = """
import gc, json, os
channel = next(o for o in gc.get_objects() if type(o).__name__ == 'ResultChannel')
for index in range(3):  # the probes: all a forger can do is guess their values
    channel.value(index, json.dumps(42))
channel.passed(3)  # the statement test: forgeable, the harness runs it in this process
channel.send({'done': 4, 'load': None, 'mem': False})
os._exit(0)
"""
SECRET_TESTS = [
    "assert answer() == 917263",
    "assert answer() != 42",
    "assert answer() in (917263, 1)",
    "assert len([answer()]) == 1 and sorted([answer()]) == [5]",
]


@pytest.mark.timeout(60)
def test_a_forger_cannot_pass_probes_because_expected_values_never_enter_the_sandbox(hostile_sandbox):
    (result,) = hostile_sandbox.run([Job(id="forger", solution=IN_PROCESS_FORGER, tests=SECRET_TESTS)])
    assert result.outcome in ("failed", "error")
    assert not any(t.passed for t in result.tests)  # the statement test runs in the judge's own process


@pytest.mark.timeout(60)
def test_a_naive_forger_is_caught_as_forging(hostile_sandbox):
    solution = (
        "import gc, os\n"
        "channel = next(o for o in gc.get_objects() if type(o).__name__ == 'ResultChannel')\n"
        "for index in range(4):\n"
        "    channel.passed(index)\n"
        "channel.send({'done': 4, 'load': None, 'mem': False})\n"
        "os._exit(0)\n"
    )
    (result,) = hostile_sandbox.run([Job(id="naive-forger", solution=solution, tests=SECRET_TESTS)])
    assert result.outcome == "error" and not any(t.passed for t in result.tests)
