"""The recipe corpus (generator/data/recipe_corpus.jsonl): the data the demo model learns the recipe's formats
from, and whose held-out split is an evaluation benchmark. Every reference solution passes every one of its
tests in the real sandbox (and a broken copy does not), every problem is unique after the pipeline's own
normalization, the pipeline's HumanEval decontamination flags none, and bad corpus files give one clear line.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections import Counter

import pytest

from generator.corpus import CORPUS_FILE, MIN_TESTS, corpus_hashes, load_corpus
from selfinstruct.errors import UserError

ROWS = load_corpus()


def broken(row) -> str:
    """The solution with its entry point redefined to answer None for everything."""
    return f"{row.solution}\n\n\ndef {row.entry_point}(*args, **kwargs):\n    return None\n"


def test_size_and_fixed_held_out_split():
    assert len(ROWS) >= 200
    held_out = [r for r in ROWS if r.split == "heldout"]
    assert len(held_out) >= 40
    assert len(ROWS) - len(held_out) >= 160
    assert Counter(r.difficulty for r in ROWS).keys() == {"easy", "medium"}
    assert load_corpus(split="heldout") == held_out  # the split is the file's, not computed


def test_rows_are_well_formed_problems():
    names = Counter(r.entry_point for r in ROWS)
    assert [n for n, c in names.items() if c > 1] == []
    for row in ROWS:
        defined = {node.name for node in ast.parse(row.solution).body if isinstance(node, ast.FunctionDef)}
        assert row.entry_point in defined, row.id
        assert re.search(rf"\b{row.entry_point}\(", row.problem), f"{row.id}: the problem names its function"
        assert len(row.tests) >= MIN_TESTS and len(set(row.tests)) == len(row.tests), row.id
        for test in row.tests:
            statement = ast.parse(test).body
            assert len(statement) == 1 and isinstance(statement[0], ast.Assert), f"{row.id}: {test!r}"
            assert re.search(rf"\b{row.entry_point}\(", test), f"{row.id}: test does not call its function: {test!r}"


def test_solutions_use_only_the_standard_library():
    for row in ROWS:
        for node in ast.walk(ast.parse(row.solution)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in sys.stdlib_module_names, f"{row.id} imports {module}"


def test_every_problem_is_unique_after_the_pipelines_normalization():
    from generator.dedup import NearDeduplicator

    assert len(corpus_hashes(ROWS)) == len(ROWS)  # the pipeline's exact-dedup key
    near = NearDeduplicator()
    assert [r.id for r in ROWS if near.add(r.problem) is not None] == []
    assert near.find("Please " + ROWS[0].problem.lower()) is not None  # the filter is live


def test_no_problem_is_flagged_by_the_pipelines_humaneval_decontamination():
    from generator.decontam import Decontaminator, humaneval_texts

    decontaminator = Decontaminator.from_sources(humaneval=True)
    task_id, prompt = humaneval_texts()[0]
    assert decontaminator.check(prompt) is not None  # the index is the real one
    assert {row.id: reason for row in ROWS if (reason := decontaminator.check(row.problem))} == {}


_ROW = {"id": "x", "problem": "Write f(x) returning x twice.", "entry_point": "f",
        "solution": "def f(x):\n    return 2 * x\n", "split": "train", "difficulty": "easy", "topic": "math"}


@pytest.mark.parametrize("content, message", [
    (None, "recipe corpus not found"),
    ('{"id": "x", "problem": "Write f(x) returning x twice.",', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps(_ROW | {"tests": []}), "has 0 tests; every problem needs at least 5 asserts"),
    (json.dumps(_ROW), r"bad recipe corpus row \(tests: Field required\)"),
    ("", "holds no problems"),
])
def test_a_bad_corpus_file_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    if content is not None:
        path.write_text(content + "\n")
    with pytest.raises(UserError, match=message) as info:
        load_corpus(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.timeout(120)
def test_a_corrupted_corpus_fails_the_fine_tuning_cli_with_one_line(tmp_path, capsys):
    from finetune.cli import main

    bad = tmp_path / "corpus.jsonl"
    bad.write_bytes(CORPUS_FILE.read_bytes()[:5000])  # cut mid-row
    code = main(["--model", "tiny", "--recipe", "warmup", "--out", str(tmp_path / "ft"), "--max-steps", "1",
                 "--set", f"data.recipe.path={bad}", "--set", "data.rehearsal=[]", "--set", "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not valid JSON" in err[0], err


@pytest.fixture(scope="module")
def corpus_sandbox(docker_client):
    import docker

    from executor.config import DEFAULT_IMAGE
    from executor.sandbox import Sandbox, SandboxConfig

    try:
        docker_client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        reason = f"sandbox image {DEFAULT_IMAGE} missing; run `selfinstruct sandbox build`"
        if os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"required service unavailable: {reason}")
        pytest.skip(reason)
    with Sandbox(SandboxConfig(workers=2, timeout_s=20, memory_mb=256), client=docker_client) as pool:
        yield pool


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_every_reference_solution_passes_every_test_in_the_sandbox(corpus_sandbox):
    from executor.jobs import Job

    results = corpus_sandbox.run([Job(id=row.id, solution=row.solution, tests=row.tests) for row in ROWS])
    failures = {res.id: (res.outcome, [t.error for t in res.tests if not t.passed], res.stderr[-300:])
                for res in results if res.outcome != "passed"}
    assert failures == {}
    for row, res in zip(ROWS, results):
        assert res.tests_passed == len(row.tests), row.id


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_a_broken_solution_fails_its_tests_in_the_sandbox(corpus_sandbox):
    from executor.jobs import Job

    results = corpus_sandbox.run([Job(id=row.id, solution=broken(row), tests=row.tests) for row in ROWS])
    assert [res.id for res in results if res.outcome == "passed"] == []
    assert {res.outcome for res in results} == {"failed"}
