"""Any OpenAI-compatible server (vLLM's own server, llama.cpp, TGI, a hosted API), raw or chat.

`api: completions` (the default) posts the stage's raw Llama 2 prompt, `[INST]` tags and one-shot
example included, to `{base_url}/completions`. `api: chat` posts the same prompt to
`{base_url}/chat/completions` as `messages`, cut at its tags by `generator.prompts.chat_messages`
(the one-shot example becomes a prior user/assistant pair; `system_prompt` becomes a system message),
and reads `choices[i].message.content`. Everything else (n, stop, seed, sampling, usage, top-ups,
retries) is the same for both. A chat choice whose `message.content` is null or missing is read as
empty text with its finish reason, not retried: servers send null when a model spent its tokens
elsewhere (reasoning, a refusal), a retry with the same seed would get the same, and an empty answer
is recorded as the parsers' "empty" failure instead of failing the whole call. A choice without a
`message` object is a malformed answer (retried).

One HTTP request per `GenerationRequest` (`n` samples in one call), at most `concurrency` in flight,
each retried with exponential backoff and jitter on 429, 5xx, network errors (a cut connection
included), timeouts and answers that are not a completions response. A 4xx other than 429 (a wrong
model name or a route the server does not offer: 404; a bad key: 401) is not retried. After the
retries the whole `generate` call fails with one `BackendError` line.

Token accounting. Servers report `usage` per request, not per choice. Each completion gets a share
such that the shares of one request's `n` completions add up exactly to the server's numbers:
`prompt_tokens` splits evenly (the prompt was processed once for all samples), `completion_tokens`
gives each choice that stopped for `length` exactly `max_tokens` and splits the rest over the other
choices in proportion to their text length. With n = 1 both are exact.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from generator.backends.base import BackendError, Completion, FinishReason, GenerationRequest
from generator.backends.config import OpenAIBackendConfig
from generator.backends.usage import split_completion_tokens, split_evenly
from generator.prompts import chat_messages

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_LENGTH_REASONS = frozenset({"length", "max_tokens", "max_length"})
_PATHS = {"completions": "/completions", "chat": "/chat/completions"}


class _Retryable(Exception):
    """A failure worth another try; the message is what the final error line says."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def request_body(
    model: str, request: GenerationRequest, n: int | None = None, *, api: str = "completions",
    system: str | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /completions` (or `/chat/completions`) for one request.

    `n` overrides the request's, for top-ups. In chat mode the prompt goes as `messages`; a prompt
    not in the `[INST] ... [/INST]` shape raises `ValueError`.
    """
    text = {"messages": chat_messages(request.prompt, system)} if api == "chat" else {"prompt": request.prompt}
    body: dict[str, Any] = {
        "model": model,
        **text,
        "n": request.n if n is None else n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def finish_reason(raw: object) -> FinishReason:
    """Servers spell it differently (TGI: eos_token, stop_sequence); all that is not a length cut is a stop."""
    return "length" if isinstance(raw, str) and raw.lower() in _LENGTH_REASONS else "stop"


def parse_response(
    payload: object, expected_n: int, api: str = "completions"
) -> tuple[list[tuple[str, FinishReason]], int, int]:
    """(text, finish reason) per choice in index order, plus usage (prompt, completion tokens).

    Raises `_Retryable` when the payload is not a completions (or chat completions) response.
    Missing usage counts as 0.
    """
    what = "a chat completions" if api == "chat" else "a completions"
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        raise _Retryable(f"answer is not {what} response (no 'choices' list): {_excerpt(payload)}")
    choices = payload["choices"]
    if not choices or len(choices) > expected_n:
        raise _Retryable(f"answer has {len(choices)} choices for n={expected_n}")
    parsed: dict[int, tuple[str, FinishReason]] = {}
    for position, choice in enumerate(choices):
        text = _chat_text(choice) if api == "chat" else _completion_text(choice)
        index = choice.get("index", position)
        if not isinstance(index, int) or index in parsed:
            raise _Retryable(f"answer has a bad or repeated choice index: {_excerpt(choice)}")
        parsed[index] = (text, finish_reason(choice.get("finish_reason")))
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    completion_tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    return [parsed[i] for i in sorted(parsed)], prompt_tokens, completion_tokens


def _completion_text(choice: object) -> str:
    if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
        raise _Retryable(f"answer has a choice without a 'text' string: {_excerpt(choice)}")
    return choice["text"]


def _chat_text(choice: object) -> str:
    """`message.content`; null or missing content is empty text (see the module docstring)."""
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _Retryable(f"answer has a choice without a 'message' object: {_excerpt(choice)}")
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _Retryable(f"answer has a message whose 'content' is not a string: {_excerpt(choice)}")
    return content


def _excerpt(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_message(response: httpx.Response) -> str:
    """The server's own error text (OpenAI: {"error": {"message": ...}}; others: {"detail"|"message"})."""
    try:
        body = response.json()
    except ValueError:
        return _excerpt(response.text) or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "detail", "error"):
                if isinstance(err.get(key), str):
                    return _excerpt(err[key], 200)
        if isinstance(err, str):
            return _excerpt(err, 200)
    return _excerpt(body)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend:
    """`Backend` over `POST {base_url}/completions` or `/chat/completions`; thread-safe, one connection pool."""

    def __init__(self, cfg: OpenAIBackendConfig) -> None:
        self.cfg = cfg
        self.model_name = cfg.model
        self.url = cfg.base_url.rstrip("/") + _PATHS[cfg.api]
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="openai-backend")

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        failed = threading.Event()  # per call: concurrent calls from other threads are independent
        futures = [self._pool.submit(self._complete, r, failed) for r in requests]
        results: list[list[Completion]] = []
        try:
            for future in futures:
                results.append(future.result())
        except BaseException:
            failed.set()  # queued requests give up instead of running after the call failed
            for future in futures:
                future.cancel()
            raise
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # one request: n samples, topped up when a server returns fewer choices than asked for

    def _complete(self, request: GenerationRequest, failed: threading.Event) -> list[Completion]:
        completions: list[Completion] = []
        while len(completions) < request.n:
            if failed.is_set():
                raise BackendError("cancelled: another request of the same call failed")
            missing = request.n - len(completions)
            # a top-up continues the seed sequence (sample i uses seed + i, as vLLM does for n > 1)
            part = request if not completions else request.model_copy(
                update={"seed": None if request.seed is None else request.seed + len(completions)}
            )
            completions += self._post(part, missing, failed)
        return completions

    def _post(self, request: GenerationRequest, n: int, failed: threading.Event) -> list[Completion]:
        try:
            body = request_body(self.model_name, request, n, api=self.cfg.api, system=self.cfg.system_prompt)
        except ValueError as exc:
            raise BackendError(f"{self.url} (api: chat) cannot send this prompt as messages: {exc}") from None
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                payload = self._send(body)
                choices, prompt_tokens, completion_tokens = parse_response(payload, n, self.cfg.api)
            except _Retryable as exc:
                if attempt + 1 == attempts or failed.is_set():
                    raise BackendError(
                        f"{self.url} (model {self.model_name!r}) failed after {attempts} tries: {exc}"
                    ) from None
                time.sleep(self._delay(attempt, exc.retry_after_s))
                continue
            latency = time.perf_counter() - started
            texts = [text for text, _ in choices]
            reasons = [reason for _, reason in choices]
            prompt_shares = split_evenly(prompt_tokens, len(choices))
            completion_shares = split_completion_tokens(completion_tokens, texts, reasons, request.max_tokens)
            return [
                Completion(text=text, finish_reason=reason, prompt_tokens=p, completion_tokens=c, latency_s=latency)
                for text, reason, p, c in zip(texts, reasons, prompt_shares, completion_shares, strict=True)
            ]
        raise AssertionError("unreachable")

    def _send(self, body: dict[str, Any]) -> object:
        try:
            response = self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within {self.cfg.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"cannot reach the server ({exc.__class__.__name__}: {exc})") from None
        if response.status_code in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {_error_message(response)}", _retry_after(response))
        if response.status_code >= 400:
            hint = self._not_found_hint() if response.status_code == 404 else ""
            raise BackendError(
                f"{self.url} rejected the request for model {self.model_name!r}: "
                f"HTTP {response.status_code}: {_error_message(response)}{hint}"
            )
        try:
            return response.json()
        except ValueError:
            raise _Retryable(f"answer is not JSON: {_excerpt(response.text)!r}") from None

    def _not_found_hint(self) -> str:
        """404 means an unknown model or a route the server does not offer: name both, and the other api."""
        other = "completions" if self.cfg.api == "chat" else "chat"
        return (
            f" (is the model name right? or this server may not offer {_PATHS[self.cfg.api]}; "
            f"try `api: {other}`)"
        )

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with full jitter; a server's Retry-After is honoured up to the cap."""
        if retry_after_s is not None:
            return min(retry_after_s, self.cfg.max_backoff_s)
        ceiling = min(self.cfg.backoff_s * (2**attempt), self.cfg.max_backoff_s)
        return random.uniform(ceiling / 2, ceiling)
