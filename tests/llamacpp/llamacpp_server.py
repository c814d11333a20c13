"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) as a subprocess on loopback.

`with LlamaCppServer(gguf_path, model="tiny") as server:` starts it on a free port, waits until
`GET /v1/models` answers, and on exit terminates it (then kills it if it has not gone after `stop_timeout_s`).
`server.base_url` (http://127.0.0.1:PORT/v1) and `server.model` are what an OpenAI client is given.
The server's output goes to `server.log_path`; a start that fails raises with its last lines.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaCppServer:
    def __init__(self, gguf: str | Path, model: str = "tiny", n_ctx: int = 512, n_threads: int = 2,
                 start_timeout_s: float = 60.0, stop_timeout_s: float = 10.0, extra_args: tuple[str, ...] = ()):
        self.gguf = Path(gguf)
        self.model = model
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", model,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), *extra_args,
        ]
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_path = Path(tempfile.mkstemp(prefix="llamacpp-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaCppServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {self.start_timeout_s:.0f} s: {self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=self.stop_timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
