"""The bundled instruct seed set (finetune/data/seed_instruct.jsonl) that scripts/quickstart.sh adds to the
fine-tuning data when a random model yields few triples: every row is a well-formed `jsonl` export row,
every solution passes all of its tests in the real sandbox (and a broken copy of it does not), no problem
is contaminated by HumanEval or duplicates another, and the file trains through the fine-tuning reader.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

SEED_FILE = Path(__file__).resolve().parents[2] / "finetune" / "data" / "seed_instruct.jsonl"
QUICKSTART_SEQ_LEN = 512  # scripts/quickstart.sh fine-tunes with --set data.seq_len=512
PROVENANCE_SOURCE = "bundled seed set (hand-written for the quickstart)"


class SeedProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str


class SeedRow(BaseModel):
    """A `jsonl` export row whose provenance says it was bundled rather than generated."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^seed-\d{2}$")
    problem: str = Field(min_length=80)
    tests: list[str] = Field(min_length=4, max_length=5)
    solution: str = Field(min_length=20)
    provenance: SeedProvenance


def seed_rows() -> list[SeedRow]:
    with SEED_FILE.open(encoding="utf-8") as handle:
        return [SeedRow.model_validate(json.loads(line)) for line in handle if line.strip()]


def entry_point(row: SeedRow) -> str:
    """The function the problem asks for: the solution's top-level function that the problem names."""
    defined = [node.name for node in ast.parse(row.solution).body if isinstance(node, ast.FunctionDef)]
    named = [name for name in defined if re.search(rf"\b{re.escape(name)}\(", row.problem)]
    assert len(named) == 1, f"{row.id}: the problem must name exactly one defined function, got {named}"
    return named[0]


def broken(row: SeedRow) -> str:
    """The solution with its entry point redefined to answer None for everything."""
    return f"{row.solution}\n\n\ndef {entry_point(row)}(*args, **kwargs):\n    return None\n"


ROWS = seed_rows()


def test_rows_are_forty_well_formed_problems():
    assert len(ROWS) == 40
    assert [r.id for r in ROWS] == [f"seed-{i:02d}" for i in range(1, 41)]
    for row in ROWS:
        assert row.provenance.source == PROVENANCE_SOURCE
        name = entry_point(row)
        for test in row.tests:
            statement = ast.parse(test).body
            assert len(statement) == 1 and isinstance(statement[0], ast.Assert), f"{row.id}: {test!r}"
            assert re.search(rf"\b{name}\(", test), f"{row.id}: test does not call {name}: {test!r}"


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


def test_no_problem_overlaps_humaneval():
    from generator.decontam import Decontaminator, humaneval_texts

    decontaminator = Decontaminator.from_sources(humaneval=True)
    # The index is the real one: a HumanEval prompt itself is flagged.
    task_id, prompt = humaneval_texts()[0]
    assert decontaminator.check(prompt) is not None
    contaminated = {row.id: reason for row in ROWS if (reason := decontaminator.check(row.problem))}
    assert contaminated == {}


def test_no_exact_or_near_duplicate_problems():
    from generator.dedup import ExactDeduplicator, NearDeduplicator

    exact, near = ExactDeduplicator(), NearDeduplicator()
    for row in ROWS:
        assert exact.add(row.problem), f"{row.id} repeats an earlier problem"
        assert near.add(row.problem) is None, f"{row.id} nearly repeats an earlier problem"
    # The filters are live: a reworded copy of a kept problem is caught.
    assert near.find("Please " + ROWS[0].problem.lower()) is not None
    assert not exact.add("  " + ROWS[1].problem.upper())


@pytest.mark.timeout(120)
def test_set_loads_and_fits_through_the_finetune_reader(tmp_path):
    from finetune.data import read_exports, tokenize_examples
    from model.checkpoint import load_tokenizer
    from model.init import init_checkpoint

    tokenizer = load_tokenizer(init_checkpoint("tiny", tmp_path / "tiny", seed=0))
    examples = read_exports([SEED_FILE])
    assert [e.id for e in examples] == [r.id for r in ROWS]
    for example, row in zip(examples, ROWS):
        assert example.messages[0] == {"role": "user", "content": row.problem}
        assert row.solution.strip("\n") in example.messages[-1]["content"]
    docs = tokenize_examples(tokenizer, examples, QUICKSTART_SEQ_LEN)  # a UserError if any row is too long
    assert all(doc.n_trained > 0 for doc in docs)


@pytest.fixture(scope="module")
def seed_sandbox(docker_client):
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
def test_every_solution_passes_all_its_tests_in_the_sandbox(seed_sandbox):
    from executor.jobs import Job

    results = seed_sandbox.run([Job(id=row.id, solution=row.solution, tests=row.tests) for row in ROWS])
    failures = {
        res.id: (res.outcome, [t.error for t in res.tests if not t.passed], res.stderr[-300:])
        for res in results
        if res.outcome != "passed"
    }
    assert failures == {}
    for row, res in zip(ROWS, results):
        assert res.tests_passed == len(row.tests), row.id


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_a_broken_solution_fails_its_tests_in_the_sandbox(seed_sandbox):
    from executor.jobs import Job

    results = seed_sandbox.run([Job(id=row.id, solution=broken(row), tests=row.tests) for row in ROWS])
    passing = [res.id for res in results if res.outcome == "passed" or res.tests_passed == len(res.tests)]
    assert passing == []
    assert {res.outcome for res in results} == {"failed"}
