"""Hostile programs: each is contained, classified, never passes, and the next ordinary job passes.

Every program comes with tests it could only "pass" by cheating (its function is absent or wrong), so a
`passed` verdict would mean the sandbox was fooled. After each program an ordinary job must pass, see a
clean scratch space and no stray processes, which shows the damage did not outlive the job.
"""

from __future__ import annotations

import textwrap

import pytest

from executor.config import SandboxConfig
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
def hostile_sandbox(sandbox_image, docker_client):
    cfg = SandboxConfig(
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
    assert len(HOSTILE) >= 20


@pytest.mark.timeout(60)
def test_host_unaffected_and_only_the_pool_remains(hostile_sandbox, docker_client):
    docker_client.ping()
    owner = hostile_sandbox._owner
    running = [
        docker_client.containers.get(c["Id"])
        for c in docker_client.api.containers(filters={"label": f"selfinstruct.sandbox.owner={owner}"})
    ]
    assert len(running) <= 2 * 2  # both pools (shared fixture and this one), nothing leaked
    for container in running:
        attrs = container.attrs["HostConfig"]
        assert attrs["NetworkMode"] == "none" and attrs["ReadonlyRootfs"] is True
        assert attrs["CapDrop"] == ["ALL"] and "no-new-privileges" in attrs["SecurityOpt"]
        assert attrs["Memory"] == attrs["MemorySwap"] and attrs["PidsLimit"] in (48, 64)
        assert attrs["Init"] is True
        processes = container.top(ps_args="-o pid,uid,args")["Processes"]
        users = {int(uid) for _, uid, command in processes if "python3" in command}
        assert users == {10001}  # the runner (and every job it forks) is unprivileged


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
