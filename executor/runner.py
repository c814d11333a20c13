"""The long-lived runner inside each sandbox container: one job in on stdin, one verdict out on stdout.

Shipped into the container as `python3 -c <bootstrap>` source (`bootstrap_source()`), because the root
filesystem is read-only and `put_archive` cannot write to it. Standard library only.

Per job the runner forks a fresh child (copy-on-write, no interpreter start-up: a few ms) which
  - starts a new session (its own process group), closes every inherited descriptor, reads /dev/null
    as stdin, writes stdout/stderr into pipes the runner drains and caps, and keeps one private pipe
    for the harness's records;
  - runs under rlimits: CPU seconds, address space, file size, open files, no core dumps, and volunteers
    for the OOM killer (oom_score_adj 1000) so a memory bomb kills itself, not the runner;
  - runs the harness (`harness.run_job`) and `os._exit`s.
The runner enforces the wall clock (kill the process group, then sweep /proc for anything that
escaped it, e.g. a `setsid()` grandchild), empties the scratch tmpfs, and decides the outcome from the
harness's records, never from the exit status alone. It marks itself non-dumpable
(PR_SET_DUMPABLE 0) so a child running as the same user cannot open /proc/<runner>/fd/1 to forge the
verdict, nor read or write its memory.
"""

from __future__ import annotations

import _signal  # the C functions: no enum conversions, so fewer pages touched in the child
import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import time

try:  # inside the sandbox the bootstrap registers the harness under this name
    import si_harness as harness  # type: ignore[import-not-found]
except ImportError:  # on the host (tests, source shipping)
    from executor import harness

_os_exit = os._exit  # bound now: a solution that replaces os._exit must not keep its process alive
PR_SET_DUMPABLE = 4
SCRATCH_DIRS = ("/tmp", "/dev/shm")
SWEEP_ROUNDS = 50
READ_CHUNK = 65536
DRAIN_READS = 16
EXIT_POLL_MS = 50.0  # without a pidfd (gVisor): the longest sleep between exit checks if a SIGCHLD were lost
WORKDIR = "/tmp/job"
MAX_PRECOMPILE_CHARS = 256 * 1024
MAX_RECORD_BYTES = 32 << 20  # all of a job's records, probe values included
_TEST_CACHE: dict = {}  # test source -> compiled test; the ten solutions of a problem share their tests
# Imported once by the runner so that forked jobs find them loaded (saves ~10-40 ms per job that uses them).
PRELOAD = (
    "math",
    "random",
    "re",
    "itertools",
    "functools",
    "collections",
    "heapq",
    "bisect",
    "string",
    "typing",
    "hashlib",
    "statistics",
    "fractions",
    "copy",
    "operator",
    "decimal",
    "datetime",
    "json",
    "array",
)


def _set_non_dumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z"
    except (OSError, ValueError):
        return True  # gone


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _sweep(protected: set[int]) -> int:
    """SIGKILL every live process that is not protected (init, the container's main process, us).

    Returns how many escapees were found. Repeats because a fork bomb can fork while being swept.
    """
    found = 0
    for _ in range(SWEEP_ROUNDS):
        live = [pid for pid in _pids() if pid not in protected and not _is_zombie(pid)]
        if not live:
            break
        found += len(live)
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()
        time.sleep(0.001)
    _reap()
    return found


def _make_tree_writable(path: str) -> None:
    """chmod 700 a directory tree (top-down, so a mode-000 directory is opened only after it is fixed)."""
    if os.path.islink(path):
        return
    os.chmod(path, 0o700)
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)


def _remove(path: str) -> bool:
    """Remove a file or tree the job left behind, whatever modes it set. True when it is gone."""
    for _ in range(3):
        if not os.path.lexists(path):
            return True
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    _make_tree_writable(path)
            else:
                os.unlink(path)
        except Exception:  # noqa: BLE001, S110 - never let a job's leftovers take the runner down
            pass
    return not os.path.lexists(path)


def _clear_scratch() -> bool:
    """Empty the writable tmpfs mounts between jobs. Returns False if something could not be removed."""
    clean = True
    for root in SCRATCH_DIRS:
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        for name in entries:
            clean = _remove(os.path.join(root, name)) and clean
    return clean


def _prepare(job: dict) -> tuple | None:
    """Compile the job in the runner, before forking: a child that compiles pays ~1 ms of copy-on-write
    faults. Oversized sources are left to the child, so a pathological input cannot stall the runner."""
    tests = [test if isinstance(test, str) else str(test.get("probe")) for test in job.get("tests") or []]
    sources = [job.get(phase) or "" for phase in harness.PHASES] + tests
    if sum(len(source) for source in sources) > MAX_PRECOMPILE_CHARS:
        return None
    try:
        return harness.compile_phases(job), harness.compile_tests(list(job.get("tests") or []), _TEST_CACHE)
    except BaseException:  # noqa: BLE001 - anything odd: let the child compile (and fail) on its own
        return None


def _child(target: tuple, limits: dict, fds: tuple, out_fd: int, err_fd: int) -> None:
    """In the forked child: isolate, limit, run the harness, exit. Never returns.

    Kept lean on purpose: every object the child touches costs a copy-on-write page fault.
    """
    status = 70
    try:
        os.setsid()
        if _exit_wakeup:  # the runner's SIGCHLD wakeup is not the job's: its fd number is closed below
            _signal.set_wakeup_fd(-1)
            _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(signal.SIGXFSZ, _signal.SIG_IGN)  # oversize writes fail with EFBIG instead of killing
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        staged = [os.dup(fd) for fd in fds]  # above every target, so no dup2 below overwrites a source
        for number, fd in enumerate(staged, 3):
            os.dup2(fd, number)
        _close_from(3 + len(fds))
        try:
            oom = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(oom, b"1000")
            os.close(oom)
        except OSError:
            pass
        cpu = max(1, int(limits["timeout_s"] + 1))
        memory = int(limits["memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["fsize_mb"]) << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(limits["max_files"]),) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.get("max_procs"):  # the job's own bound on processes and threads (all of them share the uid)
            resource.setrlimit(resource.RLIMIT_NPROC, (int(limits["max_procs"]),) * 2)
        try:
            os.mkdir(WORKDIR)
        except FileExistsError:
            pass
        os.chdir(WORKDIR)
        role, job, prepared, nonce = target
        if role == "solution":  # answers the judge on fds 3 (requests) and 4 (replies); no result channel
            harness.serve_solution(job, prepared, 3, 4)
        elif role == "judge":  # records on fd 3, the solution's replies on 4, requests on 5
            harness.judge_job(job, prepared, harness.ResultChannel(3, nonce), 4, 5)
        else:
            harness.run_job(job, harness.ResultChannel(3, nonce), prepared)
        status = 0
    except BaseException:  # noqa: BLE001 - report through the exit status; never unwind into the runner
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001, S110 - stderr may be gone; the exit status still tells
            pass
        status = 71
    finally:
        _os_exit(status)


class _Capture:
    """Keeps the head of a stream and counts everything."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.head = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]

    def text(self) -> str:
        text = self.head.decode("utf-8", errors="replace")
        if self.total > len(self.head):
            text += f"\n[... {self.total - len(self.head)} more bytes not kept]"
        return text


def _close_from(first: int) -> None:
    """Close every descriptor >= first: the open ones listed in /proc/self/fd (a 65536-wide closerange
    is one syscall per number under gVisor's ptrace platform, ~1 s)."""
    try:
        numbers = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(first, 65536)
        return
    for fd in numbers:
        if fd >= first:
            try:
                os.close(fd)
            except OSError:
                pass


_exit_wakeup: list[int] = []  # read end of the SIGCHLD wakeup pipe, made on the first job without a pidfd


def _child_exit_wakeup() -> int:
    """Without pidfds (gVisor): a pipe that gets a byte whenever a child exits (SIGCHLD), so the runner sleeps
    in poll until something happens instead of calling waitid every few ms for the whole job (each call is
    a trip through gVisor's ptrace platform). HumanEval throughput measured the same either way (25-27/s
    under runsc); the difference is the CPU a long job's supervision burns."""
    if not _exit_wakeup:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wakeup fd is written
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        _exit_wakeup.append(read_fd)
    return _exit_wakeup[0]


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (the pidfd-less path)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def run_one(job: dict, limits: dict, protected: set[int]) -> dict:
    """Fork a child for `job`, supervise it, and return the verdict record."""
    started = time.monotonic()
    tests = job.get("tests") or []
    timeout_s = float(job.get("timeout_s") or limits["timeout_s"])
    limits = dict(limits, timeout_s=timeout_s)
    prepared = _prepare(job)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    server = None
    if any(not isinstance(test, dict) for test in tests):
        # A test that is not a probe: the solution gets a process of its own, forked before the nonce and the
        # result pipe exist, and the tests run in a separate judge process (see harness.judge_job).
        ask_r, ask_w = os.pipe()
        answer_r, answer_w = os.pipe()
        server = os.fork()
        if server == 0:
            _child(("solution", job, prepared, ""), limits, (ask_r, answer_w), out_w, err_w)
        os.close(ask_r)
        os.close(answer_w)
    nonce = os.urandom(16).hex()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if server is None:
            _child(("single", job, prepared, nonce), limits, (result_w,), out_w, err_w)
        _child(("judge", job, prepared, nonce), limits, (result_w, answer_r, ask_w), out_w, err_w)
    for fd in (result_w, out_w, err_w, *((answer_r, ask_w) if server is not None else ())):
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gVisor (runsc) has no pidfd_open: SIGCHLD wakes the poll, waitid(WNOWAIT) confirms
        pidfd = None
    wakeup = _child_exit_wakeup() if pidfd is None else None
    for fd in (result_r, out_r, err_r):
        os.set_blocking(fd, False)

    stdout, stderr = _Capture(int(limits["keep"])), _Capture(int(limits["keep"]))
    records = bytearray()
    probes = sum(isinstance(test, dict) for test in tests)
    record_cap = min(MAX_RECORD_BYTES, (len(tests) + 2) * 1024 + probes * (harness.MAX_VALUE_CHARS + 128))
    deadline = started + timeout_s
    killed_for = None
    exited = False
    open_fds = {result_r: records, out_r: stdout, err_r: stderr}
    poller = select.poll()
    for fd in (*open_fds, *((pidfd,) if pidfd is not None else (wakeup,))):
        poller.register(fd, select.POLLIN)

    def drain(fd: int) -> None:
        """Read what is there, at most DRAIN_READS chunks, so a flood cannot keep us from the limits."""
        sink = open_fds[fd]
        for _ in range(DRAIN_READS):
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                poller.unregister(fd)
                del open_fds[fd]
                os.close(fd)
                return
            if isinstance(sink, bytearray):
                if len(sink) < record_cap:  # beyond what the harness can write: an attack, cut off
                    sink += data
            else:
                sink.add(data)

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_for = "timeout"
            break
        wait_ms = remaining * 1000 if pidfd is not None else min(remaining * 1000, EXIT_POLL_MS)
        events = poller.poll(wait_ms)
        for fd, _ in events:
            if fd == pidfd:
                exited = True
            elif fd == wakeup:
                try:
                    os.read(wakeup, READ_CHUNK)  # empty it: one byte per signal, any child's
                except BlockingIOError:
                    pass
            elif fd in open_fds:
                drain(fd)
        if pidfd is None and not exited:
            exited = _has_exited(pid)
        if stdout.total + stderr.total > int(limits["output_limit"]):
            killed_for = "output_limit"
            break
        if exited:
            for fd in list(open_fds):
                drain(fd)
            break

    server_status = None
    if server is not None:  # how the solution's process ended, if it did before being killed below
        try:
            server_status = os.waitid(os.P_PID, server, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            pass
    for child in (pid, server) if server is not None else (pid,):
        for kill, target in ((os.killpg, child), (os.kill, child)):  # the group; the child if not yet a leader
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    _, status, usage = os.wait4(pid, 0)
    server_cpu = 0.0
    if server is not None:
        _, server_wait, server_usage = os.wait4(server, 0)
        server_cpu = server_usage.ru_utime + server_usage.ru_stime
        if server_status is not None:  # it ended on its own: its signal, if any, classifies the job
            if os.WIFSIGNALED(server_wait) and not os.WIFSIGNALED(status):
                status = server_wait
    if pidfd is not None:
        os.close(pidfd)
    for fd in list(open_fds):
        try:
            drain(fd)
        except OSError:
            pass
    escaped = _sweep(protected)
    for fd in list(open_fds):
        os.close(fd)
    scratch_clean = _clear_scratch()
    duration_ms = (time.monotonic() - started) * 1000

    results: list[dict | None] = [None] * len(tests)
    done = None
    forged = False
    for line in bytes(records).splitlines():
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or record.get("k") != nonce:
                raise ValueError("bad record")
        except ValueError:
            forged = True
            continue
        if done is not None:
            forged = True  # nothing legitimate follows the final record
        elif "done" in record:
            done = record
        else:
            index = record.get("i")
            if not isinstance(index, int) or not 0 <= index < len(tests) or results[index] is not None:
                forged = True
                continue
            if isinstance(tests[index], dict) and "v" in record:
                # A probe's value: provisionally passed; the host, which alone knows the expected value, decides.
                results[index] = {"passed": True, "error": None, "value": record["v"]}
            elif isinstance(tests[index], dict) and record.get("ok") is not False or "v" in record:
                forged = True  # the harness reports a probe only as a value or a failure, a statement never as a value
            else:
                results[index] = {"passed": record.get("ok") is True, "error": record.get("e")}

    notes = []
    cpu_s = usage.ru_utime + usage.ru_stime + server_cpu
    signaled = os.WIFSIGNALED(status)
    signum = os.WTERMSIG(status) if signaled else None
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if killed_for == "timeout":
        outcome = "timeout"
        notes.append(f"wall-clock limit of {timeout_s:g}s reached; process group killed")
    elif killed_for == "output_limit":
        outcome = "output_limit"
        notes.append(f"output exceeded {limits['output_limit']} bytes; process group killed")
    elif signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_s >= timeout_s):
        outcome = "timeout"
        notes.append(f"CPU-time limit reached ({cpu_s:.2f}s)")
    elif signum == signal.SIGKILL:
        outcome = "memory"
        notes.append("killed by SIGKILL it did not receive from the runner (the OOM killer)")
    elif forged:
        outcome = "error"
        notes.append("the result channel carried records the harness did not write; verdict discarded")
    elif done is None or exit_code != 0:
        outcome = "error"
        if signaled:
            notes.append(f"killed by {_signal_name(signum)} before the harness finished")
        else:
            notes.append(f"exited with status {exit_code} before the harness finished")
    elif done.get("mem"):
        outcome = "memory"
    elif done.get("load"):
        outcome = "error"
    elif all(r is not None and r["passed"] for r in results) and done.get("done") == len(tests):
        outcome = "passed"
    else:
        outcome = "failed"
    if done is not None and done.get("load"):
        notes.append(str(done["load"]))
    not_run = "not run" + (f" ({outcome})" if outcome != "failed" else "")
    test_results = [r if r is not None else {"passed": False, "error": not_run} for r in results]
    if outcome == "passed" and not all(r["passed"] for r in test_results):
        outcome = "failed"  # belt and braces: "passed" needs every test's own record to say so

    anomaly = None
    missing = [pid for pid in protected if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)]
    if missing:
        anomaly = f"container process(es) {missing} died during the job"
    elif escaped:
        anomaly = f"{escaped} process(es) escaped the job's process group and were killed"
    elif not scratch_clean:
        anomaly = "scratch space could not be emptied"
    elif forged:
        anomaly = "forged result records"
    elif outcome == "memory":
        anomaly = "memory exhaustion"
    stderr_text = stderr.text()
    if notes:
        stderr_text += ("\n" if stderr_text and not stderr_text.endswith("\n") else "") + "".join(
            f"[sandbox] {note}\n" for note in notes
        )
    return {
        "outcome": outcome,
        "tests": test_results,
        "duration_ms": round(duration_ms, 3),
        "stdout": stdout.text(),
        "stderr": stderr_text,
        "cpu_s": round(cpu_s, 4),
        "anomaly": anomaly,
    }


def main() -> None:
    """Serve jobs until stdin closes. Line protocol: {"job": {...}, "limits": {...}} -> verdict."""
    _set_non_dumpable()
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    gc.freeze()  # the preloaded heap is never scanned by a child's collector, so forks stay copy-on-write
    protected = {os.getpid(), *(pid for pid in _pids() if pid != os.getpid())}  # init + main process
    _clear_scratch()
    channel_path = os.environ.pop("SELFINSTRUCT_RUNNER_SOCKET", None)
    if channel_path:  # socket transport: the host accepts this one connection and then removes the listener
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        channel.connect(channel_path)
        reader, out_fd = channel.makefile("rb"), channel.fileno()
    else:  # exec transport: the exec's stdin/stdout
        reader, out_fd = sys.stdin.buffer, 1
    _lock_stdio()
    _write_all(
        out_fd, (json.dumps({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]}) + "\n").encode()
    )
    while True:
        line = reader.readline()
        if not line:
            return
        message = {}
        try:
            message = json.loads(line)
            reply = run_one(message["job"], message["limits"], protected)
        except Exception as exc:  # noqa: BLE001 - report the runner's own failure as a sandbox error
            reply = {
                "outcome": "sandbox_error",
                "tests": [],
                "duration_ms": 0.0,
                "stdout": "",
                "stderr": f"[sandbox] runner failure: {type(exc).__name__}: {exc}\n",
                "anomaly": "runner failure",
            }
        reply["seq"] = message.get("seq") if isinstance(message, dict) else None
        _write_all(out_fd, (json.dumps(reply) + "\n").encode())


def _lock_stdio() -> None:
    """Mode 000 on the runner's stdio pipes. Under runc, PR_SET_DUMPABLE 0 already keeps a job from opening
    /proc/<runner>/fd/1; gVisor (runsc) does not apply that check to /proc/<pid>/fd, but it does check the
    pipe's mode on open, and a job cannot chmod a pipe it holds no descriptor for. The runner's own open
    descriptors keep working (modes are checked at open). Sockets cannot be reopened through /proc at all."""
    for fd in (0, 1, 2):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):  # a pipe (a tty or /dev/null: EPERM, harmless)
                os.fchmod(fd, 0)
        except OSError:
            pass


def bootstrap_source() -> str:
    """Python source for `python3 -c`: registers the harness as a module, then runs this runner."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    harness_src = (here / "harness.py").read_text()
    runner_src = (here / "runner.py").read_text()
    return (
        "import sys, types\n"
        "def _load(name, source):\n"
        "    module = types.ModuleType(name)\n"
        "    module.__file__ = name + '.py'\n"
        "    sys.modules[name] = module\n"
        "    exec(compile(source, name + '.py', 'exec'), module.__dict__)\n"
        "    return module\n"
        f"_load('si_harness', {harness_src!r})\n"
        f"_load('si_runner', {runner_src!r}).main()\n"
    )
