"""A real OpenAI-compatible completions server on loopback, for tests and the benchmark.

It answers `POST /v1/completions` and `POST /v1/chat/completions` from a deterministic text function
of (prompt, sample index, seed), so tests can predict every completion; for chat the "prompt" is
`chat_prompt(messages)`, by default `chat_key` (a test may render the messages as a chat template
would). It records what it saw: request paths, bodies, headers, and the most requests it ever had in
flight at once. Faults are injected per test: a queue of canned failures (an HTTP status,
a stall longer than the client's timeout, a garbage body, a connection closed without an answer)
served before normal answers, an optional fixed delay per request, and either route switched off
(404, like a server that does not offer it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def chat_key(messages: list[dict[str, str]]) -> str:
    """The text the chat route feeds to `text_fn` in place of a prompt."""
    return json.dumps(messages, sort_keys=True)


def deterministic_text(prompt: str, index: int, seed: int | None, max_tokens: int) -> str:
    """A reproducible 'completion': a few words derived from a hash, at most `max_tokens` words."""
    digest = hashlib.sha256(f"{prompt}|{index}|{seed}".encode()).hexdigest()
    words = [f"w{digest[i:i + 4]}" for i in range(0, 24, 4)]
    return " " + " ".join(words[:max_tokens])


_ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


@dataclass
class Fault:
    status: int | None = None  # answer with this HTTP status
    stall_s: float = 0.0  # sleep before answering (longer than the client timeout = a timeout)
    body: bytes | None = None  # answer 200 with this raw body (garbage)
    retry_after: str | None = None
    cut: bool = False  # close the connection without answering
    message: object = None  # chat only: answer 200 with this as the first choice's `message`


@dataclass
class ServerState:
    model: str = "tiny"
    api_key: str | None = None
    delay_s: float = 0.0
    max_choices: int | None = None  # answer at most this many choices (a server that ignores n)
    routes: frozenset[str] = frozenset({"completions", "chat"})  # the others answer 404
    faults: deque[Fault] = field(default_factory=deque)
    text_fn: Callable[[str, int, int | None, int], str] = deterministic_text
    chat_prompt: Callable[[list[dict[str, str]]], str] = chat_key  # chat route: messages -> text_fn's prompt
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    state: ServerState  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        state = self.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            fault = state.faults.popleft() if state.faults else None
        try:
            self._answer(state, raw, fault)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, state: ServerState, raw: bytes, fault: Fault | None) -> None:
        route = _ROUTES.get(self.path.rstrip("/"))
        if route not in state.routes:
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(raw)
        with state.lock:
            state.bodies.append(body)
            state.paths.append(self.path)
            state.auth_headers.append(self.headers.get("Authorization"))
        time.sleep(state.delay_s)
        if fault is not None:
            time.sleep(fault.stall_s)
            if fault.cut:
                self.close_connection = True  # the handler returns without a byte: the socket just closes
                return None
            if fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return self._json(fault.status, {"error": {"message": f"injected {fault.status}"}}, headers)
            if fault.body is not None:
                return self._raw(200, fault.body)
        if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            return self._json(401, {"error": {"message": "Incorrect API key provided"}})
        if body.get("model") != state.model:
            return self._json(
                404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
            )
        n = int(body.get("n", 1))
        answered = n if state.max_choices is None else min(n, state.max_choices)
        max_tokens = int(body.get("max_tokens", 16))
        choices = []
        completion_tokens = 0
        prompt = body["prompt"] if route == "completions" else state.chat_prompt(body["messages"])
        for i in range(answered):
            text = state.text_fn(prompt, i, body.get("seed"), max_tokens)
            if len(text.split()) > max_tokens:  # a "token" is a word here
                text = " " + " ".join(text.split()[:max_tokens])
            for stop in body.get("stop") or []:
                if stop in text:
                    text = text[: text.index(stop)]
            tokens = len(text.split())
            completion_tokens += tokens
            reason = "length" if tokens >= max_tokens else "stop"
            if route == "completions":
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
            else:
                message = {"role": "assistant", "content": text}
                if i == 0 and fault is not None and fault.message is not None:
                    message = fault.message
                choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": None})
        prompt_tokens = len(body["prompt"].split()) if route == "completions" else sum(
            len(m["content"].split()) for m in body["messages"]
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        kind = "text_completion" if route == "completions" else "chat.completion"
        self._json(200, {"id": "cmpl-test", "object": kind, "model": state.model, "choices": choices, "usage": usage})

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, content_type: str = "text/plain",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer


class CompletionServer:
    """`with CompletionServer() as server: server.base_url` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, state: ServerState | None = None) -> None:
        self.state = state or ServerState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="completion-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> CompletionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
