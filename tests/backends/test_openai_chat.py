"""`api: chat` of the OpenAI backend: prompts as messages, and both apis against the loopback server.

The prompt tests pin the exact messages each stage sends; the server tests run every behaviour the
completions api has (n, request fields, usage split, retries, top-ups, the 404 line) for both apis.
"""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import pytest
import yaml
from completion_server import CompletionServer, Fault, ServerState, chat_key, deterministic_text

from generator.backends import BackendError, GenerationRequest, OpenAIBackendConfig, make_backend
from generator.config import load_config
from generator import prompts
from generator.prompts import chat_messages
from selfinstruct.errors import UserError

pytestmark = pytest.mark.timeout(60)

APIS = ["completions", "chat"]

# --- the stage prompts as messages -------------------------------------------------------------

TESTS_EXAMPLE_USER = """Your task is to write 5 tests to check the correctness of a function that solves a programming
problem.
The tests must be between [TESTS] and [/TESTS] tags.
You must write the comment "#Test case n:" on a separate line directly above each assert statement,
where n represents the test case number, starting from 1 and increasing by one for each subsequent
test case.
Problem: Write a Python function to get the unique elements of a list."""

TESTS_EXAMPLE_ANSWER = """[TESTS]
# Test case 1:
assert get_unique_elements([]) == []
# Test case 2:
assert get_unique_elements([1]) == [1]
# Test case 3:
assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]
[/TESTS]"""

SOLUTIONS_EXAMPLE_USER = """Your task is to write a Python function to solve a programming problem.
The Python code must be between [PYTHON] and [/PYTHON] tags.
You are given one example test from which you can infere the function signature.
Problem: Write a Python function to get the unique elements of a list.
Test: assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]"""

SOLUTIONS_EXAMPLE_ANSWER = """[PYTHON]
def get_unique_elements(my_list):
    return list(set(my_list))
[/PYTHON]"""


def test_the_problems_prompt_is_one_user_message():
    assert chat_messages(prompts.problems_prompt(7)) == [
        {
            "role": "user",
            "content": "Write 7 programming interview questions of easy and medium complexity. Provide questions on a\n"
            "diverse range of subjects, and make sure no two questions are alike. Make sure the problems can be "
            "solved with a\nsingle standalone Python function using standard libraries.",
        }
    ]


def test_the_tests_prompt_is_the_example_pair_then_the_question():
    assert chat_messages(prompts.tests_prompt("  Reverse a string.\n", count=5)) == [
        {"role": "user", "content": TESTS_EXAMPLE_USER},
        {"role": "assistant", "content": TESTS_EXAMPLE_ANSWER},
        {"role": "user", "content": "Problem: Reverse a string."},
    ]


def test_the_solutions_prompt_is_the_example_pair_then_the_question_and_its_shown_test():
    prompt = prompts.solutions_prompt("Reverse a string.", "assert rev('ab') == 'ba'")
    assert chat_messages(prompt) == [
        {"role": "user", "content": SOLUTIONS_EXAMPLE_USER},
        {"role": "assistant", "content": SOLUTIONS_EXAMPLE_ANSWER},
        {"role": "user", "content": "Problem: Reverse a string.\nTest: assert rev('ab') == 'ba'"},
    ]


def test_a_sys_block_becomes_the_system_message_after_an_explicit_one():
    prompt = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhello [/INST] hi </s><s>[INST] bye [/INST]"
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
             {"role": "user", "content": "bye"}]
    assert chat_messages(prompt) == [{"role": "system", "content": "Be brief."}, *turns]
    assert chat_messages(prompt, system=" You write Python. ") == [
        {"role": "system", "content": "You write Python.\n\nBe brief."}, *turns
    ]
    assert chat_messages("[INST] q [/INST]", system="S") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "q"}
    ]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Write a function.", "must start with [INST]"),
        ("", "must start with [INST]"),
        ("Note: [INST] q [/INST]", "must start with [INST]"),
        ("[INST] q [/INST] an answer with no question after it", "must end with [/INST]"),
        ("[INST] q", "must end with [/INST]"),
        ("[INST] a [INST] b [/INST]", "must alternate"),
        ("[INST] a [/INST] b [/INST]", "must alternate"),
        ("[INST]  \n [/INST]", "turn 1 (user) of the prompt is empty"),
        ("[INST] a [/INST]\n[INST] b [/INST]", "turn 2 (assistant) of the prompt is empty"),
        ("[INST] a [/INST] b [INST] <<SYS>>\nx\n<</SYS>>\n\nc [/INST]", "<<SYS>> may only open the first"),
    ],
)
def test_prompts_of_any_other_shape_are_a_one_line_value_error(prompt, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        chat_messages(prompt)
    assert "\n" not in str(info.value)


# --- both apis against the loopback server ------------------------------------------------------


@pytest.fixture
def server():
    with CompletionServer(ServerState(model="tiny")) as srv:
        yield srv


def _backend(server: CompletionServer, api: str, **overrides):
    cfg = dict(base_url=server.base_url, model="tiny", api=api, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5)
    cfg.update(overrides)
    return make_backend(OpenAIBackendConfig(**cfg))


def _key(api: str, prompt: str, system: str | None = None) -> str:
    """What the server's text function sees for `prompt` under `api`."""
    return prompt if api == "completions" else chat_key(chat_messages(prompt, system))


PROMPT = "[INST] Write 3 questions. [/INST]"


@pytest.mark.parametrize("api", APIS)
def test_n_samples_and_every_request_field_reach_the_right_route(server, api):
    request = GenerationRequest(prompt=PROMPT, n=3, temperature=0.8, top_p=0.95, max_tokens=5,
                                stop=["[/PYTHON]"], seed=7)
    with _backend(server, api) as backend:
        (completions,) = backend.generate([request])
    assert [c.text for c in completions] == [deterministic_text(_key(api, PROMPT), i, 7, 5) for i in range(3)]
    (body,) = server.state.bodies
    text = {"prompt": PROMPT} if api == "completions" else {
        "messages": [{"role": "user", "content": "Write 3 questions."}]
    }
    assert body == {"model": "tiny", **text, "n": 3, "temperature": 0.8, "top_p": 0.95, "max_tokens": 5,
                    "stop": ["[/PYTHON]"], "seed": 7}
    assert server.state.paths == ["/v1/completions" if api == "completions" else "/v1/chat/completions"]


def test_chat_sends_the_stage_prompt_as_messages_with_the_system_prompt_first(server):
    prompt = prompts.tests_prompt("Reverse a string.")
    with _backend(server, "chat", system_prompt="You are a careful tester.") as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=prompt, max_tokens=4, seed=1)])
    (body,) = server.state.bodies
    assert "prompt" not in body
    assert body["messages"] == [
        {"role": "system", "content": "You are a careful tester."},
        {"role": "user", "content": TESTS_EXAMPLE_USER},
        {"role": "assistant", "content": TESTS_EXAMPLE_ANSWER},
        {"role": "user", "content": "Problem: Reverse a string."},
    ]
    assert completions[0].text == deterministic_text(chat_key(body["messages"]), 0, 1, 4)


@pytest.mark.parametrize("api", APIS)
def test_usage_is_split_and_finish_reasons_are_read(server, api):
    server.state.text_fn = lambda prompt, i, seed, max_tokens: " " + " ".join(["x"] * (2 + 2 * i))
    with _backend(server, api) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, n=4, max_tokens=6, seed=1)])
    # the server counts words: 5 in the raw prompt, 3 in the chat message's content
    assert sum(c.prompt_tokens for c in completions) == (5 if api == "completions" else 3)
    assert [c.finish_reason for c in completions] == ["stop", "stop", "length", "length"]
    assert [c.completion_tokens for c in completions] == [2, 4, 6, 6]


@pytest.mark.parametrize("api", APIS)
def test_429_honours_retry_after(server, api):
    server.state.faults.append(Fault(status=429, retry_after="0.4"))
    with _backend(server, api, max_backoff_s=5) as backend:
        started = time.perf_counter()
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=3, seed=2)])
    assert time.perf_counter() - started >= 0.4
    assert len(server.state.bodies) == 2
    assert completions[0].text == deterministic_text(_key(api, PROMPT), 0, 2, 3)


@pytest.mark.parametrize("api", APIS)
def test_retries_after_500s_and_a_cut_connection(server, api):
    server.state.faults.extend([Fault(status=500), Fault(cut=True), Fault(status=503)])
    with _backend(server, api, max_retries=3) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=3, seed=0)])
    assert completions[0].text == deterministic_text(_key(api, PROMPT), 0, 0, 3)
    assert len(server.state.bodies) == 4


@pytest.mark.parametrize("api", APIS)
def test_cut_connections_fail_after_the_retries_with_one_line(server, api):
    server.state.faults.extend(Fault(cut=True) for _ in range(3))
    with _backend(server, api, max_retries=2) as backend:
        with pytest.raises(BackendError, match="failed after 3 tries: cannot reach the server") as info:
            backend.generate([GenerationRequest(prompt=PROMPT)])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("api", APIS)
def test_malformed_json_is_retried(server, api):
    server.state.faults.extend([Fault(body=b"<html>502 Bad Gateway</html>"), Fault(body=b'{"choices": 3}')])
    with _backend(server, api, max_retries=2) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=3, seed=4)])
    assert completions[0].text == deterministic_text(_key(api, PROMPT), 0, 4, 3)
    assert len(server.state.bodies) == 3


@pytest.mark.parametrize("api", APIS)
def test_a_response_of_the_other_api_is_malformed(server, api):
    other = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}' if api == "completions" \
        else b'{"choices": [{"index": 0, "text": "x"}]}'
    server.state.faults.extend(Fault(body=other) for _ in range(2))
    expected = "without a 'text' string" if api == "completions" else "without a 'message' object"
    with _backend(server, api, max_retries=1) as backend:
        with pytest.raises(BackendError, match=f"failed after 2 tries: answer has a choice {expected}"):
            backend.generate([GenerationRequest(prompt=PROMPT)])


@pytest.mark.parametrize("api", APIS)
def test_fewer_choices_than_asked_are_topped_up_with_continuing_seeds(server, api):
    server.state.max_choices = 1
    with _backend(server, api) as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, n=3, max_tokens=4, seed=10)])
    assert [b["seed"] for b in server.state.bodies] == [10, 11, 12]
    assert [b["n"] for b in server.state.bodies] == [3, 2, 1]
    assert [c.text for c in completions] == [deterministic_text(_key(api, PROMPT), 0, s, 4) for s in (10, 11, 12)]


@pytest.mark.parametrize("message", [{"role": "assistant", "content": None}, {"role": "assistant"}])
def test_a_chat_choice_without_content_is_empty_text_not_a_retry(server, message):
    server.state.faults.append(Fault(message=message))
    with _backend(server, "chat") as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, n=2, max_tokens=3, seed=5)])
    assert len(server.state.bodies) == 1
    assert completions[0].text == "" and completions[0].finish_reason == "length"  # the server's own reason
    assert completions[1].text == deterministic_text(_key("chat", PROMPT), 1, 5, 3)


def test_a_chat_choice_whose_content_is_not_text_is_retried(server):
    server.state.faults.append(Fault(message={"role": "assistant", "content": [{"type": "text"}]}))
    with _backend(server, "chat") as backend:
        (completions,) = backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=3, seed=5)])
    assert len(server.state.bodies) == 2
    assert completions[0].text == deterministic_text(_key("chat", PROMPT), 0, 5, 3)


@pytest.mark.parametrize(("api", "path", "other"), [("completions", "/completions", "chat"),
                                                    ("chat", "/chat/completions", "completions")])
def test_a_route_the_server_does_not_offer_is_one_line_naming_the_url_and_the_other_api(api, path, other):
    with CompletionServer(ServerState(model="tiny", routes=frozenset({other}))) as server:
        with _backend(server, api) as backend:
            with pytest.raises(BackendError) as info:
                backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=2)])
        url = server.base_url + path
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{url} rejected the request for model 'tiny': HTTP 404: no route /v1{path}")
    assert message.endswith(f"(is the model name right? or this server may not offer {path}; try `api: {other}`)")


@pytest.mark.parametrize("api", APIS)
def test_a_wrong_model_name_names_both_possibilities_and_is_not_retried(server, api):
    with _backend(server, api, model="codellama-7b") as backend:
        with pytest.raises(BackendError) as info:
            backend.generate([GenerationRequest(prompt=PROMPT, max_tokens=2)])
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 404: The model `codellama-7b` does not exist." in message
    assert "is the model name right?" in message and "try `api:" in message
    assert len(server.state.bodies) == 1


def test_a_prompt_that_is_not_a_chat_prompt_fails_before_any_request(server):
    with _backend(server, "chat") as backend:
        with pytest.raises(BackendError) as info:
            backend.generate([GenerationRequest(prompt="Write a function.")])
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"{server.base_url}/chat/completions (api: chat) cannot send this prompt as messages: "
                       "not a Llama 2 chat prompt (it must start with [INST]): Write a function.")
    assert server.state.bodies == []


# --- configuration ---------------------------------------------------------------------------------


def test_the_default_is_the_completions_api():
    cfg = OpenAIBackendConfig(base_url="http://h:8000/v1", model="m")
    assert (cfg.api, cfg.system_prompt) == ("completions", None)
    assert make_backend(cfg).url == "http://h:8000/v1/completions"


def test_a_system_prompt_without_chat_is_refused():
    with pytest.raises(ValueError, match="system_prompt is sent only with `api: chat`"):
        OpenAIBackendConfig(base_url="http://h/v1", model="m", system_prompt="S")


def test_a_pipeline_config_with_api_chat_validates_and_reaches_the_backend_unchanged(tmp_path: Path):
    chat = {"kind": "openai", "base_url": "http://127.0.0.1:8001/v1", "model": "codellama-7b-instruct",
            "api": "chat", "system_prompt": "You write Python."}
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump({
        "run": "chat", "db": f"sqlite:///{tmp_path / 'x.db'}",
        "problems": {"backend": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "llama-2-70b-chat",
                                 "api": "chat"}},
        "tests": {"backend": chat}, "solutions": {"backend": chat},
    }))
    cfg = load_config(path)
    assert cfg.problems.backend.api == "chat" and cfg.problems.backend.system_prompt is None
    assert cfg.tests.backend.model_dump() == cfg.solutions.backend.model_dump()
    assert {k: v for k, v in cfg.tests.backend.model_dump().items() if k in chat} == chat
    with make_backend(cfg.solutions.backend) as backend:
        assert backend.url == "http://127.0.0.1:8001/v1/chat/completions"
    # the Ray pool ships the record to its actors by pickling: it must come back equal
    assert pickle.loads(pickle.dumps(cfg.tests.backend)) == cfg.tests.backend


@pytest.mark.parametrize(("override", "message"), [
    ("tests.backend.api=chats", "tests.backend.api: Input should be 'completions' or 'chat' (got \"chats\")"),
    ("tests.backend.system_prompt=hi", "tests.backend: Value error, system_prompt is sent only with `api: chat`"),
])
def test_bad_api_settings_are_one_config_line(tmp_path: Path, override, message):
    path = tmp_path / "bad.yaml"
    backend = {"kind": "openai", "base_url": "http://h/v1", "model": "m"}
    path.write_text(yaml.safe_dump({"run": "x", "db": "sqlite:///x.db", "problems": {"backend": dict(backend)},
                                    "tests": {"backend": dict(backend)}, "solutions": {"backend": dict(backend)}}))
    with pytest.raises(UserError, match=re.escape(message)) as info:
        load_config(path, [override])
    assert "\n" not in str(info.value)


# --- the pipeline in chat mode ---------------------------------------------------------------------


def _llama2_template(messages: list[dict[str, str]]) -> str:
    """The raw prompt a Llama 2 chat template would build from the messages (no system message here)."""
    text = ""
    for message in messages:
        if message["role"] == "user":
            text += f"[INST] {message['content']}\n[/INST]"
        else:
            text += f"\n{message['content']}\n"
    return text


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_the_scripted_run_through_chat_messages_yields_the_expected_triples(tmp_path, docker_client):
    from scripted_server import openai_backend, scripted_server

    from generator.config import validate_config
    from generator.pipeline import Pipeline
    from tests.generator.pipeline_helpers import config_dict, triples
    from tests.generator.scripted_backend import EXPECTED_TRIPLES

    server = scripted_server()
    server.state.chat_prompt = _llama2_template  # the scripted model reads the prompt the template rebuilt
    with server:
        cfg = config_dict(tmp_path / "chat.db", run="chat")
        for stage in ("problems", "tests", "solutions"):
            cfg[stage]["backend"] = {**openai_backend(server), "api": "chat"}
        report = Pipeline(validate_config(cfg), progress=False, plot=False).run()

    assert report.status == "finished"
    assert {(text, code) for text, code, _ in triples(cfg["db"], "chat")} == EXPECTED_TRIPLES
    assert set(server.state.paths) == {"/v1/chat/completions"}
    assert all("prompt" not in body and body["messages"][-1]["role"] == "user" for body in server.state.bodies)
