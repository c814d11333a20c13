"""One warm, hardened container and the runner process serving jobs inside it.

The container's main process is `sleep infinity` under Docker's init (which reaps orphans), both owned
by uid 0 with no capabilities so the unprivileged job cannot kill them; the runner is started as the
sandbox user with `docker exec`. Jobs and verdicts travel over one of two private channels:
  - socket (local daemon): the host listens on a unix socket in a fresh host directory that is
    bind-mounted read-only into the container; it accepts exactly one connection (the runner's) and
    then closes and unlinks the listener, so no job can ever connect. The data path skips dockerd and
    containerd-shim (~0.4-1 ms of their CPU per job).
  - exec: the exec's attached stdin/stdout, relayed by dockerd; works with any daemon.
Either way nothing a job can reach (not even PID 1's descriptors) leads into the protocol stream.

The host keeps its own deadline on every job: when the runner does not answer in time, or its stream
breaks, the container is killed and the job gets a verdict anyway; the pool then replaces the container.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass

import docker
from docker.types import LogConfig

from executor.config import CONTAINER_LABEL, RUNNER_HEADROOM_MB, SANDBOX_UID, SandboxConfig
from executor.runner import bootstrap_source

OWNER_LABEL = f"{CONTAINER_LABEL}.owner"
CHANNEL_LABEL = f"{CONTAINER_LABEL}.channel"  # the host directory of a socket-transport container
CHANNEL_PREFIX = "selfinstruct-runner-"
STDOUT, STDERR = 1, 2
RUNNER_ENV = {
    "PYTHONHASHSEED": "0",  # the same set/dict iteration order in every container, run after run
    "PYTHONIOENCODING": "utf-8:backslashreplace",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
}
START_TIMEOUT_S = 30.0
CHANNEL_MOUNT = "/run/selfinstruct"  # where the host's channel directory appears in the container (read-only)
CHANNEL_SOCKET = "runner.sock"
RUNSC_PIDS_HEADROOM = 512  # host threads of gVisor's sentry and its ptrace stubs, counted in the container's pids cgroup
LOCAL_DAEMON_URLS = ("http+docker://localhost", "http+docker://localunixsocket")


def remove_channel_dir(path: str | None) -> None:
    """Remove a socket-transport channel directory, if `path` really is one of ours on this host."""
    if not path:
        return
    parent, name = os.path.split(os.path.normpath(path))
    if parent == os.path.normpath(tempfile.gettempdir()) and name.startswith(CHANNEL_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def daemon_is_local(client: docker.DockerClient) -> bool:
    """True when the daemon is reached over a local unix socket, so it can bind-mount this host's paths."""
    return client.api.base_url in LOCAL_DAEMON_URLS


class RunnerGone(Exception):
    """The runner's stream ended or broke, or it did not answer before the host deadline."""

    def __init__(self, message: str, *, deadline: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.deadline = deadline
        self.sent = sent  # False: the job never reached the runner (safe to retry elsewhere)


class ForgedReply(Exception):
    """A line in the runner's stream that is not the runner's reply to the job just sent (a job wrote it)."""


def owner_label() -> str:
    """`host:pid:start-time` of this process, so a later process can tell whether the owner still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"


def process_start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "?"


def owner_is_alive(label: str) -> bool:
    """False when `label` names a process on this host that has exited (its containers are stale)."""
    host, _, rest = label.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine's sandbox: not ours to judge
    pid = int(pid_text)
    return os.path.exists(f"/proc/{pid}") and process_start_time(pid) == start


def container_options(cfg: SandboxConfig) -> dict:
    """The hardening flags, in docker-py's `containers.run` vocabulary."""
    memory_mb = cfg.memory_mb + cfg.tmpfs_mb * 2 + RUNNER_HEADROOM_MB  # /tmp and /dev/shm are charged too
    scratch = f"rw,nosuid,nodev,noexec,size={cfg.tmpfs_mb}m,mode=1777"
    return {
        "command": ["sleep", "infinity"],
        "runtime": cfg.runtime,
        # Init and the idle main process run as uid 0 with an empty capability set: the job's user cannot
        # signal them, so no job can stop the container under the next job. The runner and every job
        # run as SANDBOX_UID (see the exec below); no-new-privileges stops any way back to uid 0.
        "user": "0:0",
        "working_dir": "/tmp",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": scratch},
        "shm_size": f"{cfg.tmpfs_mb}m",
        "mem_limit": f"{memory_mb}m",
        "memswap_limit": f"{memory_mb}m",
        "mem_swappiness": 0,
        # Under runsc the host cgroup holds gVisor's own kernel (the sentry's threads, the ptrace stubs), so it
        # gets room for those; the job's processes are still bounded by RLIMIT_NPROC set in the runner's fork.
        "pids_limit": cfg.pids_limit if cfg.runtime == "runc" else cfg.pids_limit + RUNSC_PIDS_HEADROOM,
        "nano_cpus": int(cfg.cpus * 1e9),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "ipc_mode": "private",
        "environment": RUNNER_ENV,
        "log_config": LogConfig(type=LogConfig.types.JSON, config={"max-size": "1m", "max-file": "1"}),
        "detach": True,
        "stdin_open": False,
    }


@dataclass
class _Frames:
    """Demultiplexes Docker's attach stream: 8-byte headers (stream id, size) followed by payload.

    With `raw` (the socket transport) there are no headers: everything is the runner's output.
    """

    buffer: bytearray
    stdout: bytearray
    stderr: bytearray
    raw: bool = False

    def feed(self, data: bytes) -> None:
        if self.raw:
            self.stdout += data
            return
        self.buffer += data
        while len(self.buffer) >= 8:
            stream, size = self.buffer[0], struct.unpack(">I", self.buffer[4:8])[0]
            if len(self.buffer) < 8 + size:
                return
            payload = bytes(self.buffer[8 : 8 + size])
            del self.buffer[: 8 + size]
            if stream == STDERR:
                self.stderr += payload
                del self.stderr[:-8192]  # keep only the tail of the runner's own diagnostics
            else:
                self.stdout += payload


class SandboxContainer:
    """A started container with a ready runner. Not thread-safe: the pool gives it to one thread at a time."""

    def __init__(
        self, client: docker.DockerClient, cfg: SandboxConfig, image_id: str, owner: str, transport: str = "exec"
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.transport = transport
        self.jobs_done = 0
        self.name = f"selfinstruct-sandbox-{uuid.uuid4().hex[:12]}"
        self._channel_dir: str | None = None
        self._exec_sock: socket.socket | None = None
        self._exec_frames = _Frames(bytearray(), bytearray(), bytearray())
        self._sock: socket.socket | None = None
        self.container = None
        try:
            options = container_options(cfg)
            environment = dict(RUNNER_ENV)
            listener = None
            if transport == "socket":
                listener, options["volumes"] = self._listen()
                environment["SELFINSTRUCT_RUNNER_SOCKET"] = f"{CHANNEL_MOUNT}/{CHANNEL_SOCKET}"
            labels = {CONTAINER_LABEL: "1", OWNER_LABEL: owner}
            if self._channel_dir is not None:
                labels[CHANNEL_LABEL] = self._channel_dir
            self.container = client.containers.run(image_id, name=self.name, labels=labels, **options)
            exec_id = client.api.exec_create(
                self.container.id,
                ["python3", "-s", "-c", bootstrap_source()],
                stdin=True,
                stdout=True,
                stderr=True,
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                environment=environment,
                workdir="/tmp",
            )["Id"]
            response = client.api.exec_start(exec_id, socket=True)
            self._exec_sock = getattr(response, "_sock", response)
            self._exec_frames = _Frames(bytearray(), bytearray(), bytearray())
            if listener is not None:
                self._sock = self._accept_runner(listener)
                self._frames = _Frames(bytearray(), bytearray(), bytearray(), raw=True)
            else:
                self._sock = self._exec_sock
                self._frames = self._exec_frames
            ready = self._read_line(time.monotonic() + START_TIMEOUT_S)
            if not ready.get("ready"):
                raise RunnerGone(f"runner did not start: {ready}")
        except BaseException:
            self.destroy()
            raise

    def _listen(self) -> tuple[socket.socket, dict]:
        """A unix socket in a fresh host directory, and the read-only bind mount that shows it to the runner."""
        self._channel_dir = tempfile.mkdtemp(prefix=CHANNEL_PREFIX)
        os.chmod(self._channel_dir, 0o755)
        path = os.path.join(self._channel_dir, CHANNEL_SOCKET)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o666)  # the runner's uid must be able to connect
        listener.listen(1)
        return listener, {self._channel_dir: {"bind": CHANNEL_MOUNT, "mode": "ro"}}

    def _accept_runner(self, listener: socket.socket) -> socket.socket:
        """Accept the runner's connection, then close and unlink the listener: nobody else ever connects."""
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:  # also watch the exec stream, so a runner that dies first is reported, not waited for
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RunnerGone(
                        "the runner did not connect to its socket (is the daemon on this host?)", sent=False
                    )
                readable, _, _ = select.select([listener, self._exec_sock], [], [], remaining)
                if listener in readable:
                    connection, _ = listener.accept()
                    if self._is_our_runner(connection):
                        return connection
                    connection.close()  # someone else on this host raced for the socket: not our runner
                    continue
                if readable:
                    data = self._exec_sock.recv(1 << 16)
                    if not data:
                        raise RunnerGone("the runner exited before connecting" + self._diagnostics(), sent=False)
                    self._exec_frames.feed(data)
        finally:
            listener.close()
            os.unlink(os.path.join(self._channel_dir, CHANNEL_SOCKET))

    def _read_line(self, deadline: float) -> dict:
        while b"\n" not in self._frames.stdout:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerGone("the runner did not answer before the host deadline", deadline=True)
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                raise RunnerGone(f"runner stream broke: {exc}") from exc
            if not data:
                raise RunnerGone("the runner exited" + self._diagnostics())
            self._frames.feed(data)
        line, _, rest = bytes(self._frames.stdout).partition(b"\n")
        self._frames.stdout = bytearray(rest)
        return json.loads(line)

    def run(self, job: dict, limits: dict, timeout_s: float) -> dict:
        """Send one job, wait for its verdict (host deadline: timeout + grace). Raises RunnerGone."""
        seq = self.jobs_done + 1  # echoed by the runner: a line left in the stream by an earlier job is caught
        message = (json.dumps({"job": job, "limits": limits, "seq": seq}) + "\n").encode()
        self._drain_exec_stream()
        if self._peer_closed():  # e.g. the container was killed from outside while idle: retry elsewhere
            raise RunnerGone("the runner was gone before the job was sent" + self._diagnostics(), sent=False)
        try:
            self._sock.settimeout(START_TIMEOUT_S)
            self._sock.sendall(message)
        except OSError as exc:
            raise RunnerGone(f"cannot send the job to the runner: {exc}", sent=False) from exc
        reply = self._read_line(time.monotonic() + timeout_s + self.cfg.host_grace_s)
        self.jobs_done += 1
        if not isinstance(reply, dict) or reply.get("seq") != seq:
            raise ForgedReply(f"the sandbox's answer is not the reply to job {seq} of this container")
        records, tests = len(reply.get("tests", [])), len(job.get("tests", []))
        if reply.get("outcome") != "sandbox_error" and records != tests:
            # the runner answers one record per test (its own failure, sandbox_error, carries none)
            raise ForgedReply(f"the sandbox's answer has {records} test records for {tests} tests")
        return reply

    def _is_our_runner(self, connection: socket.socket) -> bool:
        """The peer (SO_PEERCRED) must be the sandbox uid and a process inside this very container."""
        pid, uid, _gid = struct.unpack(
            "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
        try:
            with open(f"/proc/{pid}/cgroup") as handle:
                in_container = self.container.id in handle.read()
        except OSError:
            in_container = False
        return uid == SANDBOX_UID and in_container

    def _peer_closed(self) -> bool:
        """True when the runner's end of the channel is closed (an idle runner never writes)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and not self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _drain_exec_stream(self) -> None:
        """Socket transport: read whatever the runner wrote to its stderr (the exec stream) without waiting,
        so diagnostics are kept (their tail) and the stream never fills up and blocks the runner."""
        if self._exec_sock is None or self._exec_sock is self._sock:
            return
        try:
            self._exec_sock.setblocking(False)
            while data := self._exec_sock.recv(1 << 16):
                self._exec_frames.feed(data)
        except OSError:
            pass

    def _diagnostics(self) -> str:
        """The tail of the runner's stderr, when it left one (exec transport: it is in the same stream)."""
        self._drain_exec_stream()
        tail = self._exec_frames.stderr.decode("utf-8", "replace").strip()[-400:]
        return f": {tail}" if tail else ""

    def oom_killed(self) -> bool:
        try:
            self.container.reload()
            return bool(self.container.attrs["State"].get("OOMKilled"))
        except docker.errors.DockerException:
            return False

    def destroy(self) -> None:
        """Kill and remove the container now (no stop grace period), and its host channel directory."""
        for sock in {id(s): s for s in (self._sock, self._exec_sock) if s is not None}.values():
            try:
                sock.close()
            except OSError:
                pass
        try:
            if self.container is not None:
                self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
        finally:
            remove_channel_dir(self._channel_dir)
