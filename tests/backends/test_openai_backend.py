"""The OpenAI-compatible backend against a real HTTP server on loopback (completion_server.py)."""

from __future__ import annotations

import time

import pytest
from completion_server import CompletionServer, Fault, ServerState, deterministic_text

from generator.backends import BackendError, GenerationRequest, OpenAIBackendConfig, make_backend
from generator.backends.openai import finish_reason
from generator.backends.usage import split_completion_tokens, split_evenly

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server():
    with CompletionServer(ServerState(model="tiny")) as srv:
        yield srv


def _backend(server: CompletionServer, **overrides):
    cfg = dict(base_url=server.base_url, model="tiny", backoff_s=0.01, max_backoff_s=0.05, timeout_s=5)
    cfg.update(overrides)
    return make_backend(OpenAIBackendConfig(**cfg))


def test_n_samples_come_back_in_order_with_the_request_fields_sent(server):
    request = GenerationRequest(prompt="[INST] hi [/INST]", n=3, temperature=0.8, top_p=0.95, max_tokens=5,
                                stop=["[/PYTHON]"], seed=7)
    with _backend(server) as backend:
        (completions,) = backend.generate([request])
    assert [c.text for c in completions] == [deterministic_text(request.prompt, i, 7, 5) for i in range(3)]
    (body,) = server.state.bodies
    assert body == {"model": "tiny", "prompt": "[INST] hi [/INST]", "n": 3, "temperature": 0.8, "top_p": 0.95,
                    "max_tokens": 5, "stop": ["[/PYTHON]"], "seed": 7}
    assert all(c.latency_s > 0 for c in completions)


def test_results_follow_request_order_across_concurrent_requests(server):
    server.state.delay_s = 0.02
    requests = [GenerationRequest(prompt=f"problem {i}", n=2, max_tokens=6, seed=i) for i in range(12)]
    with _backend(server, concurrency=4) as backend:
        out = backend.generate(requests)
    assert [[c.text for c in cs] for cs in out] == [
        [deterministic_text(r.prompt, j, r.seed, 6) for j in range(2)] for r in requests
    ]


def test_usage_is_split_so_that_shares_add_up_to_the_servers_numbers(server):
    request = GenerationRequest(prompt="one two three four five", n=4, max_tokens=6, seed=1)
    server.state.text_fn = lambda prompt, i, seed, max_tokens: " " + " ".join(["x"] * (2 + 2 * i))
    with _backend(server) as backend:
        (completions,) = backend.generate([request])
    assert sum(c.prompt_tokens for c in completions) == 5
    # texts of 2, 4, 6, 8 words; the server cut the last two at max_tokens=6 ("length")
    assert [c.finish_reason for c in completions] == ["stop", "stop", "length", "length"]
    assert [c.completion_tokens for c in completions] == [2, 4, 6, 6]


def test_retries_after_injected_500s(server):
    server.state.faults.extend([Fault(status=500), Fault(status=503), Fault(status=502)])
    with _backend(server, max_retries=3) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt="p", max_tokens=3, seed=0)])
    assert completions[0].text == deterministic_text("p", 0, 0, 3)
    assert len(server.state.bodies) == 4


def test_retries_after_a_timeout(server):
    server.state.faults.append(Fault(stall_s=1.5))
    with _backend(server, timeout_s=0.5) as backend:
        started = time.perf_counter()
        (completions,) = backend.generate([GenerationRequest(prompt="p", max_tokens=3)])
    assert completions[0].text == deterministic_text("p", 0, None, 3)
    assert len(server.state.bodies) == 2
    assert time.perf_counter() - started >= 0.5


def test_429_honours_retry_after(server):
    server.state.faults.append(Fault(status=429, retry_after="0.4"))
    with _backend(server, max_backoff_s=5) as backend:
        started = time.perf_counter()
        backend.generate([GenerationRequest(prompt="p", max_tokens=3)])
    assert time.perf_counter() - started >= 0.4
    assert len(server.state.bodies) == 2


def test_concurrency_is_bounded(server):
    server.state.delay_s = 0.15
    with _backend(server, concurrency=3) as backend:
        backend.generate([GenerationRequest(prompt=f"p{i}", max_tokens=2) for i in range(12)])
    assert server.state.max_in_flight == 3


def test_api_key_comes_from_the_environment(server, monkeypatch):
    server.state.api_key = "sk-test-123"
    monkeypatch.setenv("SELFINSTRUCT_TEST_KEY", "sk-test-123")
    with _backend(server, api_key_env="SELFINSTRUCT_TEST_KEY") as backend:
        backend.generate([GenerationRequest(prompt="p", max_tokens=2)])
    assert server.state.auth_headers == ["Bearer sk-test-123"]


def test_missing_api_key_is_a_clear_401_without_retries(server, monkeypatch):
    server.state.api_key = "sk-test-123"
    monkeypatch.delenv("SELFINSTRUCT_TEST_KEY", raising=False)
    with _backend(server, api_key_env="SELFINSTRUCT_TEST_KEY") as backend:
        with pytest.raises(BackendError, match="HTTP 401: Incorrect API key provided"):
            backend.generate([GenerationRequest(prompt="p", max_tokens=2)])
    assert server.state.auth_headers == [None]


def test_wrong_model_name_fails_at_once_with_one_line(server):
    with _backend(server, model="codellama-7b") as backend:
        with pytest.raises(BackendError) as info:
            backend.generate([GenerationRequest(prompt="p", max_tokens=2)])
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 404" in message and "The model `codellama-7b` does not exist" in message
    assert len(server.state.bodies) == 1  # a 404 is not worth retrying


def test_unreachable_server_fails_after_its_retries():
    with CompletionServer() as srv:
        url = srv.base_url  # a port that was just free and is closed again below
    backend = make_backend(OpenAIBackendConfig(base_url=url, model="tiny", max_retries=2, backoff_s=0.01))
    with backend, pytest.raises(BackendError) as info:
        backend.generate([GenerationRequest(prompt="p")])
    message = str(info.value)
    assert "\n" not in message
    assert "failed after 3 tries: cannot reach the server" in message


def test_garbage_answers_fail_after_retries(server):
    server.state.faults.extend(Fault(body=b"<html>502 Bad Gateway</html>") for _ in range(3))
    with _backend(server, max_retries=2) as backend:
        with pytest.raises(BackendError, match=r"failed after 3 tries: answer is not JSON"):
            backend.generate([GenerationRequest(prompt="p")])
    assert len(server.state.bodies) == 3


def test_json_that_is_not_a_completion_is_garbage_too(server):
    server.state.faults.extend(Fault(body=b'{"result": "ok"}') for _ in range(2))
    with _backend(server, max_retries=1) as backend:
        with pytest.raises(BackendError, match="not a completions response"):
            backend.generate([GenerationRequest(prompt="p")])


def test_a_server_that_ignores_n_is_topped_up_with_continuing_seeds(server):
    server.state.max_choices = 1  # like a server without n > 1 support
    with _backend(server) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt="p", n=3, max_tokens=4, seed=10)])
    assert len(completions) == 3
    assert [b["seed"] for b in server.state.bodies] == [10, 11, 12]
    assert [b["n"] for b in server.state.bodies] == [3, 2, 1]
    assert [c.text for c in completions] == [deterministic_text("p", 0, s, 4) for s in (10, 11, 12)]


def test_one_failing_request_fails_the_call(server):
    server.state.faults.extend(Fault(status=500) for _ in range(50))
    with _backend(server, max_retries=1, concurrency=2) as backend:
        with pytest.raises(BackendError, match="HTTP 500"):
            backend.generate([GenerationRequest(prompt=f"p{i}") for i in range(4)])


def test_split_helpers():
    assert split_evenly(10, 4) == [3, 3, 2, 2]
    assert split_evenly(0, 3) == [0, 0, 0]
    counts = split_completion_tokens(17, ["aaaa", "a", "aaaaaaa"], ["stop", "stop", "length"], 5)
    assert counts[2] == 5 and sum(counts) == 17 and counts[0] > counts[1]
    assert finish_reason("length") == "length" and finish_reason("eos_token") == "stop"
    assert finish_reason(None) == "stop"
