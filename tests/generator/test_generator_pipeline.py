"""The whole recipe end to end on CPU: scripted LLM answers, the real Docker sandbox, a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from db.export import main as export_main
from generator.config import validate_config
from generator.pipeline import Pipeline
from generator.report import render_report
from selfinstruct.errors import UserError
from tests.generator.pipeline_helpers import (
    config_dict,
    duplicate_rows,
    query_rows,
    table_counts,
    triples,
    write_config,
)
from tests.generator.scripted_backend import CATALOG, CONTAMINATED, EXPECTED_SAMPLE_INDEX, EXPECTED_TRIPLES


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_scripted_run_yields_exactly_the_expected_triples_and_export(tmp_path, docker_client, capsys):
    db_path = tmp_path / "run.db"
    cfg = validate_config(config_dict(db_path))
    report = Pipeline(cfg, progress=False).run()

    got = triples(cfg.db, "e2e")
    assert {(text, code) for text, code, _ in got} == EXPECTED_TRIPLES
    assert {text: index for text, _, index in got} == EXPECTED_SAMPLE_INDEX

    f = report.funnel
    assert report.status == "finished"
    assert f["problems"]["calls"] == 3  # target 6 is never reached: max_calls stops the stage
    assert f["problems"]["parsed"] == 21
    assert f["problems"]["accepted"] == len(CATALOG)
    assert f["problems"]["contaminated"] == 1
    assert f["problems"]["exact_duplicates"] == 1 + 2 * 7  # the upper-case copy, then two calls of repeats
    assert f["tests"]["done"] == 4 and f["tests"]["failures"] == {"missing_tag": 1}
    assert f["tests"]["tests"] == 4 + 3 + 3 + 3  # "assert True" and the broken line were dropped
    assert f["solutions"]["samples"] == 40
    assert f["solutions"]["parse"] == {"ok": 38, "missing_tag": 1, "syntax_error": 1}
    outcomes = f["executions"]["outcomes"]
    assert f["executions"]["executed"] == 38 and f["executions"]["pending"] == 0
    # passing: add (samples 2, 3), reverse (5), squares (2); the cheats and the overfit one fail.
    assert outcomes["passed"] == 4
    assert outcomes["timeout"] == 1
    assert report.parse_failures["problems"] == {}
    assert report.parse_failures["tests"] == {"trivial_assert": 1, "not_assert": 1, "missing_tag": 1}
    assert report.executions_per_s and report.executions_per_s > 0
    assert report.plot_path and (tmp_path / "e2e-funnel.png").stat().st_size > 1000

    render_report(report)  # prints without error
    assert duplicate_rows(cfg.db) == dict.fromkeys(duplicate_rows(cfg.db), 0)
    assert execution_provenance(cfg.db) == {("runc", True): 38}

    out = tmp_path / "export.jsonl"
    assert export_main(["--db", cfg.db, "--run", "e2e", "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(row["problem"], row["solution"]) for row in rows} == EXPECTED_TRIPLES
    assert all(CONTAMINATED != row["problem"] for row in rows)

    # Running it again resumes a finished run: nothing is asked or written twice.
    before = table_counts(cfg.db)
    again = Pipeline(cfg, progress=False).run()
    assert table_counts(cfg.db) == before
    assert again.triples == len(EXPECTED_TRIPLES)


def execution_provenance(db_url: str) -> dict[tuple[str | None, bool], int]:
    """(runtime, image digest recorded) -> executions: what each verdict says it ran under."""
    rows = query_rows(db_url, "SELECT runtime, image_digest LIKE 'sha256:%', count(*) FROM executions GROUP BY 1, 2")
    return {(runtime, bool(digest)): count for runtime, digest, count in rows}


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_the_scripted_run_under_gvisor_yields_the_same_triples_and_records_its_runtime(tmp_path, docker_client):
    from tests.conftest import require_docker_runtime

    require_docker_runtime(docker_client, "runsc")
    data = config_dict(tmp_path / "gvisor.db", run="gvisor")
    data["sandbox"]["runtime"] = "runsc"
    cfg = validate_config(data)
    report = Pipeline(cfg, progress=False, plot=False).run()
    assert report.status == "finished"
    got = triples(cfg.db, "gvisor")
    assert {(text, code) for text, code, _ in got} == EXPECTED_TRIPLES
    assert {text: index for text, _, index in got} == EXPECTED_SAMPLE_INDEX
    assert execution_provenance(cfg.db) == {("runsc", True): 38}


@pytest.mark.timeout(60)
def test_a_backend_that_keeps_failing_fails_its_stage_in_one_line_and_keeps_committed_work(tmp_path):
    db_path = tmp_path / "run.db"
    data = config_dict(db_path, fail_stage="tests")
    cfg = validate_config(data)
    # No sandbox is needed: the run stops before any solution exists (an injected one proves it is unused).

    class NoSandbox:
        image_digest = None

        def run(self, jobs):
            raise AssertionError("the sandbox must not be reached")

    with pytest.raises(UserError) as failure:
        Pipeline(cfg, sandbox=NoSandbox(), progress=False).run()
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("tests stage failed: scripted backend: tests server returned HTTP 503")
    assert "rerun the same command to resume" in message
    counts = table_counts(cfg.db)
    assert counts["problems"] == len(CATALOG) + 1  # the problems stage committed its work
    assert counts["tests"] == 0
    assert triples(cfg.db, "e2e") == set()


@pytest.mark.ray
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_same_run_on_ray_sandbox_actors_yields_the_same_triples(tmp_path, docker_client):
    """`ray.enabled`: the sandbox runs as Ray actors (a fresh local Ray); plugin backends stay in the driver."""
    root = Path(__file__).resolve().parents[2]
    data = config_dict(tmp_path / "ray.db") | {"ray": {"enabled": True, "address": "local"}}
    config = write_config(tmp_path / "ray.yaml", data)
    result = subprocess.run(
        [sys.executable, "-m", "generator", "run", "--config", str(config), "--no-progress", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "finished" and report["funnel"]["executions"]["executed"] == 38
    got = triples(f"sqlite:///{tmp_path / 'ray.db'}", "e2e")
    assert {(text, code) for text, code, _ in got} == EXPECTED_TRIPLES


@pytest.mark.postgres
@pytest.mark.docker
@pytest.mark.timeout(240)
def test_the_scripted_run_on_postgresql(tmp_path, docker_client, pg_schema_url):
    cfg = validate_config(config_dict(tmp_path / "unused.db") | {"db": pg_schema_url})
    report = Pipeline(cfg, progress=False, plot=False).run()
    assert report.status == "finished"
    assert {(text, code) for text, code, _ in triples(cfg.db, "e2e")} == EXPECTED_TRIPLES
    before = table_counts(cfg.db)
    Pipeline(cfg, progress=False, plot=False).run()
    assert table_counts(cfg.db) == before
    assert duplicate_rows(cfg.db) == dict.fromkeys(duplicate_rows(cfg.db), 0)
    out = tmp_path / "export.jsonl"
    assert export_main(["--db", cfg.db, "--run", "e2e", "--format", "chat", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(EXPECTED_TRIPLES)
    assert all(row["text"].startswith("<s>[INST] ") and row["text"].endswith(" </s>") for row in rows)
