"""The real pipeline (no Ray) against the real llama.cpp server (`python -m llama_cpp.server`), through the
OpenAI backend in both of its APIs: raw completions, and chat messages rendered by the GGUF's chat template.

The served model is a random tiny Llama with room for the paper's one-shot prompts, so it writes garbage:
every call must be recorded with the token counts the server's `usage` gave, every parse failure recorded
rather than raised, and a second run of the same configuration must ask and write nothing twice. A random
model writes no numbered list, so a stage after problems gets work only when the stage before it is fed
by the scripted server: `problems` is served by llama.cpp in the first run, `tests` in the second (problems
scripted), `solutions` in the third (problems and tests scripted, n=2: llama.cpp's server ignores `n` and
returns one choice, so the backend's top-up must make up the second sample).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from llamacpp_server import LlamaCppServer

from generator.config import validate_config
from generator.pipeline import Pipeline
from tests.generator.pipeline_helpers import config_dict, duplicate_rows, query_rows, table_counts

sys.path.insert(0, str(Path(__file__).parents[1] / "backends"))  # scripted_server, completion_server
from scripted_server import openai_backend, scripted_server  # noqa: E402

pytestmark = [pytest.mark.llamacpp, pytest.mark.docker, pytest.mark.timeout(120)]

MODEL = "tiny-2k"
STAGES = ("problems", "tests", "solutions")


@pytest.fixture(scope="module")
def server(llama_cpp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """The tiny preset at 2048 positions (the one-shot prompts are ~700 byte-level tokens), as an f32 GGUF."""
    from model.args import ModelArgs
    from model.gguf_export import export_gguf
    from model.init import init_checkpoint

    root = tmp_path_factory.mktemp("tiny-2k")
    checkpoint = init_checkpoint(ModelArgs.from_preset("tiny", max_seq_len=2048), root / "hf", seed=0)
    with LlamaCppServer(export_gguf(checkpoint, root / "tiny-2k.gguf"), model=MODEL, n_ctx=2048) as served:
        yield served


def _llamacpp(server: LlamaCppServer, api: str) -> dict:
    return {"kind": "openai", "base_url": server.base_url, "model": MODEL, "api": api, "concurrency": 2,
            "max_retries": 0, "timeout_s": 60}


def _config(db: Path, run: str, backends: dict[str, dict]) -> dict:
    """Stages served by llama.cpp get few, short calls; scripted stages keep the scripted defaults."""
    cfg = config_dict(db, run=run)
    small = {"problems": {"target": 3, "max_calls": 2, "max_tokens": 32}, "tests": {"max_tokens": 24},
             "solutions": {"n": 2, "max_tokens": 24}}
    for stage, backend in backends.items():
        cfg[stage]["backend"] = backend
        if backend["model"] == MODEL:
            cfg[stage].update(small[stage])
    return cfg


def _calls(db_url: str) -> list[tuple[str, str, int, int, int | None]]:
    """(stage, model, prompt tokens, completion tokens, items parsed) of every call, in order."""
    return query_rows(
        db_url, "SELECT stage, model, prompt_tokens, completion_tokens, items_parsed FROM llm_calls ORDER BY id"
    )


def _posts(server: LlamaCppServer) -> int:
    """Requests the server has logged (uvicorn's access lines)."""
    return server.log_path.read_text(errors="replace").count('"POST /v1/')


def _run_twice(cfg: dict):
    """Run, then run the same configuration again: the second run resumes and finds nothing left to do."""
    validated = validate_config(cfg)
    report = Pipeline(validated, progress=False, plot=False).run()
    assert report.status == "finished"
    counts = table_counts(cfg["db"])
    again = Pipeline(validated, progress=False, plot=False).run()
    assert again.status == "finished"
    assert table_counts(cfg["db"]) == counts
    assert set(duplicate_rows(cfg["db"]).values()) == {0}
    return report


def _assert_llamacpp_calls(calls: list[tuple], stage: str, expected: int, max_tokens: int) -> None:
    """The stage's calls went to llama.cpp, each with both token counts from the server's usage."""
    served = [call for call in calls if call[0] == stage]
    assert len(served) == expected
    assert all(model == MODEL and p > 0 and 0 < c <= max_tokens for _, model, p, c, _ in served), served


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_problems_from_llamacpp_record_calls_tokens_and_parse_failures(tmp_path, server, api, docker_client):
    cfg = _config(tmp_path / "problems.db", f"llamacpp-problems-{api}", dict.fromkeys(STAGES, _llamacpp(server, api)))
    report = _run_twice(cfg)

    calls = _calls(cfg["db"])
    _assert_llamacpp_calls(calls, "problems", expected=2, max_tokens=32)  # max_calls: nothing usable came back
    assert all(parsed == 0 for *_, parsed in calls)  # each call's parse outcome is recorded: no list
    assert report.funnel["problems"]["accepted"] == 0
    assert report.triples == 0


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_tests_from_llamacpp_for_real_problems_are_recorded_parse_failures(tmp_path, server, api, docker_client):
    with scripted_server() as scripted:
        backends = {"problems": openai_backend(scripted), "tests": _llamacpp(server, api),
                    "solutions": _llamacpp(server, api)}
        cfg = _config(tmp_path / "tests.db", f"llamacpp-tests-{api}", backends)
        report = _run_twice(cfg)

    calls = _calls(cfg["db"])
    accepted = report.funnel["problems"]["accepted"]
    assert accepted > 0
    _assert_llamacpp_calls(calls, "tests", expected=accepted, max_tokens=24)  # one tests call per problem
    tests = report.funnel["tests"]  # each problem's tests failed to parse, with the reason recorded
    assert (tests["failed"], tests["pending"], tests["tests"]) == (accepted, 0, 0)
    assert sum(tests["failures"].values()) == accepted
    assert not [call for call in calls if call[0] == "solutions"]  # nothing to solve without tests
    assert report.triples == 0


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_solutions_from_llamacpp_are_topped_up_to_n(tmp_path, server, api, docker_client):
    with scripted_server() as scripted:
        backends = {"problems": openai_backend(scripted), "tests": openai_backend(scripted),
                    "solutions": _llamacpp(server, api)}
        cfg = _config(tmp_path / "solutions.db", f"llamacpp-solutions-{api}", backends)
        posts_before = _posts(server)
        report = _run_twice(cfg)
        posts = _posts(server) - posts_before

    [(with_tests,)] = query_rows(cfg["db"], "SELECT count(DISTINCT problem_id) FROM tests")
    assert with_tests > 0
    solutions = report.funnel["solutions"]
    assert solutions["samples"] == with_tests * 2  # the server gave one choice a request; the top-up the other
    assert sum(solutions["parse"].values()) == with_tests * 2
    _assert_llamacpp_calls(_calls(cfg["db"]), "solutions", expected=with_tests * 2, max_tokens=24)
    assert posts == with_tests * 2  # one request a sample: n=2 was answered with one choice each time
    assert report.triples == 0
