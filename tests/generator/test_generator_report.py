"""The run report from the database: counts, parse failures recounted from stored completions, the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from generator.report import build_report, funnel_steps, plot_funnel
from generator.stages import ProblemsStage, TestsStage
from tests.generator.stage_helpers import SeededProblems, drain, stage_context

ROOT = Path(__file__).resolve().parents[2]


class WithBrokenTests(SeededProblems):
    """Like SeededProblems, but every tests completion carries a trivial and a broken assert."""

    def generate(self, requests):
        answers = super().generate(requests)
        for request, (completion,) in zip(requests, answers, strict=True):
            if "Problem:" in request.prompt:
                completion.text += "assert True\nassert f(4 == 4\n"
        return answers


def test_report_counts_and_parse_failures(tmp_path):
    ctx = stage_context(tmp_path, "r.db")
    backend = WithBrokenTests()
    drain(ProblemsStage(ctx, lambda: backend))
    drain(TestsStage(ctx, lambda: backend))
    report = build_report(ctx.engine, ctx.run_id, wall_s=1.5)
    assert report.funnel["problems"]["accepted"] == 8 and report.funnel["tests"]["done"] == 8
    assert report.parse_failures == {"problems": {}, "tests": {"trivial_assert": 8, "syntax_error": 8}, "solutions": {}}
    assert dict(funnel_steps(report))["problems with tests"] == 8
    png = plot_funnel(report, tmp_path / "plots" / "funnel.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_report_command(tmp_path):
    ctx = stage_context(tmp_path, "cli.db")
    drain(ProblemsStage(ctx, lambda: SeededProblems()))
    db = str(ctx.engine.url)
    ctx.engine.dispose()
    result = subprocess.run(
        [sys.executable, "-m", "generator", "report", "--db", db, "--run", "stages", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["funnel"]["problems"]["accepted"] == 8
    assert Path(report["plot_path"]) == tmp_path / "stages-funnel.png" and Path(report["plot_path"]).is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "generator", "report", "--db", db, "--run", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run named 'nope'")
