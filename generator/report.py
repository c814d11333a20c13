"""The run report: a table of what each stage did, and the funnel as a PNG next to the database.

Counts come from the database (db.queries.funnel), so the report is the same whether the run went
through in one go or was resumed ten times, and `python -m generator report` can print it for any run.
Parse failures by reason are recounted by re-parsing the stored completions (the parsers are
deterministic): the schema keeps the reason of a whole failed tests call and of every failed solution
sample, but not of each dropped list item or assert. Throughput (executions/s) is measured by the
process that ran them and is reported only by that process.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from db import queries
from db.engine import normalize_url, read_transaction
from db.models import LLMCall
from generator.novelty import Novelty, novelty
from generator.parsers import parse_problems, parse_tests

_STREAM_ROWS = 1000


class RunReport(BaseModel):
    run: str
    run_id: int
    status: str
    funnel: dict[str, Any]
    parse_failures: dict[str, dict[str, int]] = Field(description="stage -> reason -> count")
    selection: dict[str, Any] = Field(
        default_factory=dict, description="pass-fraction histogram and per-rule counts (db.selection.summary)"
    )
    wall_s: float | None = Field(default=None, description="wall time of the invocation that made the report")
    executed_now: int = Field(default=0, description="executions recorded by that invocation")
    executions_per_s: float | None = None
    plot_path: str | None = None
    novelty: Novelty | None = Field(default=None, description="what is not simply the bundled recipe corpus")

    @property
    def triples(self) -> int:
        return int(self.funnel["triples"]["count"])


def _completions(engine: Engine, run_id: int, stage: str):
    calls = LLMCall.__table__
    with read_transaction(engine) as conn:
        rows = conn.execution_options(yield_per=_STREAM_ROWS).execute(
            sa.select(calls.c.completion, calls.c.finish_reason)
            .where(calls.c.run_id == run_id, calls.c.stage == stage)
            .order_by(calls.c.id)
        )
        yield from rows


def parse_failure_counts(engine: Engine, run_id: int, funnel: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Parse failures by reason per stage: every dropped list item, assert and solution sample."""
    problems: Counter[str] = Counter()
    for completion, finish_reason in _completions(engine, run_id, "problems"):
        problems.update(f.reason for f in parse_problems(completion, finish_reason).failures)
    tests: Counter[str] = Counter()
    for completion, finish_reason in _completions(engine, run_id, "tests"):
        tests.update(f.reason for f in parse_tests(completion, finish_reason).failures)
    solutions = {reason: n for reason, n in funnel["solutions"]["parse"].items() if reason != "ok"}
    return {"problems": dict(problems), "tests": dict(tests), "solutions": solutions}


def build_report(
    engine: Engine,
    run_id: int,
    *,
    wall_s: float | None = None,
    executed_now: int = 0,
    execution_busy_s: float = 0.0,
) -> RunReport:
    funnel = queries.funnel(engine, run_id)
    from db import selection

    return RunReport(
        selection=selection.summary(engine, run_id, selection.DEFAULT_THRESHOLD, selection.run_seed(engine, run_id)),
        run=funnel["run"]["name"],
        run_id=run_id,
        status=funnel["run"]["status"],
        funnel=funnel,
        parse_failures=parse_failure_counts(engine, run_id, funnel),
        wall_s=wall_s,
        executed_now=executed_now,
        executions_per_s=executed_now / execution_busy_s if executed_now and execution_busy_s > 0 else None,
        novelty=novelty(engine, run_id),
    )


def _reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _rate(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def render_report(report: RunReport, console: Console | None = None) -> None:
    """Print the report as one table (counts per stage, failures, drops, pass rates, tokens, time)."""
    console = console or Console()
    f = report.funnel
    p, t, s, e = f["problems"], f["tests"], f["solutions"], f["executions"]
    tokens = f["tokens"]
    table = Table(title=f"run {report.run!r} ({report.status})", show_lines=False)
    table.add_column("stage")
    table.add_column("counts", overflow="fold")
    table.add_column("dropped / failed (by reason)", overflow="fold")
    table.add_column("tokens in / out", justify="right")

    def toks(stage: str) -> str:
        stats = tokens.get(stage)
        return f"{stats['prompt_tokens']:,} / {stats['completion_tokens']:,}" if stats else "-"

    table.add_row(
        "problems",
        f"{p['calls']} calls, {p['parsed']} parsed, {p['stored']} unique, {p['accepted']} accepted",
        f"exact dup {p['exact_duplicates']}, near dup {p['near_duplicate']}, contaminated {p['contaminated']}; "
        f"parse: {_reasons(report.parse_failures['problems'])}",
        toks("problems"),
    )
    table.add_row(
        "tests",
        f"{t['done']} problems with tests ({t['tests']} asserts), {t['failed']} failed, {t['pending']} pending",
        f"calls: {_reasons(t['failures'])}; asserts: {_reasons(report.parse_failures['tests'])}",
        toks("tests"),
    )
    table.add_row(
        "solutions",
        f"{s['samples']} samples for {s['problems_done']} problems, {s['parse'].get('ok', 0)} parsed",
        f"parse: {_reasons(report.parse_failures['solutions'])}",
        toks("solutions"),
    )
    outcomes = dict(e["outcomes"])
    table.add_row(
        "executions",
        f"{e['executed']} run, {outcomes.get('passed', 0)} passed ({_rate(outcomes.get('passed', 0), e['executed'])}), "
        f"{e['problems_with_pass']} problems with a pass ({_rate(e['problems_with_pass'], s['problems_done'])})",
        _reasons({k: v for k, v in outcomes.items() if k != "passed"}),
        "",
    )
    table.add_row("triples", f"{f['triples']['count']} ({_reasons(f['triples']['by_rule'])})", "", "")
    if report.selection:
        sel = report.selection
        rules = ", ".join(f"{k} {v['triples']}" for k, v in sel["rules"].items())
        hist = ", ".join(f"{k}: {v}" for k, v in sel["pass_fraction_histogram"].items() if v)
        table.add_row("rules", f"would keep {rules}", f"pass fractions {hist or '-'}", "")
    console.print(table)
    if (n := report.novelty) is not None and n.accepted:
        console.print(
            f"against the bundled recipe corpus: {n.new_problems} of {n.accepted} accepted problems are new "
            f"(not a corpus problem after normalization); {n.triples_unlike_reference} of {n.triples} triples "
            f"have a solution unlike the corpus's reference ({n.triples_new_problem} for new problems, "
            f"{n.triples_other_solution} other solutions to corpus problems)"
        )
    timing = []
    if report.wall_s is not None:
        timing.append(f"wall time {report.wall_s:.1f} s")
    if report.executions_per_s is not None:
        timing.append(f"{report.executed_now} executions at {report.executions_per_s:.1f}/s")
    if report.plot_path:
        timing.append(f"funnel plot: {report.plot_path}")
    if timing:
        console.print("; ".join(timing))


def default_plot_path(db_url: str, run: str) -> Path:
    """`<run>-funnel.png` next to a SQLite database file, else in the working directory."""
    url = normalize_url(db_url)
    if (
        url.get_backend_name() == "sqlite"
        and url.database
        and url.database != ":memory:"
        and not url.database.startswith("file:")
    ):
        return Path(url.database).resolve().parent / f"{run}-funnel.png"
    return Path.cwd() / f"{run}-funnel.png"


def funnel_steps(report: RunReport) -> list[tuple[str, int]]:
    f = report.funnel
    return [
        ("questions parsed", f["problems"]["parsed"]),
        ("unique questions", f["problems"]["stored"]),
        ("accepted problems", f["problems"]["accepted"]),
        ("problems with tests", f["tests"]["done"]),
        ("solutions sampled", f["solutions"]["samples"]),
        ("solutions parsed", f["solutions"]["parse"].get("ok", 0)),
        ("solutions passing", f["executions"]["outcomes"].get("passed", 0)),
        ("problems with a pass", f["executions"]["problems_with_pass"]),
        ("triples", f["triples"]["count"]),
    ]


def plot_funnel(report: RunReport, path: str | Path) -> Path:
    """The funnel as a horizontal bar chart (PNG), counts written on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = funnel_steps(report)
    labels = [name for name, _ in steps][::-1]
    values = [value for _, value in steps][::-1]
    hist = report.selection.get("pass_fraction_histogram") if report.selection else None
    if hist:
        fig, (ax, hx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
        names, counts = list(hist), list(hist.values())
        hx.bar(range(len(names)), counts, color=["#55a868" if n == "1.0" else "#c44e52" for n in names])
        hx.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        hx.set_xlabel("pass fraction (tests passed / tests)")
        hx.set_ylabel("executions")
        rules = report.selection["rules"]
        hx.set_title("; ".join(f"{k} {v['triples']}" for k, v in rules.items()), fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.barh(labels, values, color=["#4c72b0" if "solution" not in n else "#dd8452" for n in labels])
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,}", va="center", fontsize=9)
    ax.set_xlabel("count (blue: problems, orange: solutions)")
    ax.set_title(f"self-instruct funnel, run {report.run!r}")
    ax.set_xlim(0, max(values + [1]) * 1.15)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
