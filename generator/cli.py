"""Command line: `selfinstruct generate` and `python -m generator run|report`.

    selfinstruct generate --config run.yaml [--set problems.target=10 ...]
    python -m generator run --config run.yaml              # the same; also the `ray job submit` entrypoint
    python -m generator report --config run.yaml           # or: --db URL --run NAME

Rerunning `generate` with the same configuration resumes the run from its database.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from rich.console import Console

from selfinstruct.errors import UserError, cli_entry


def _config_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--config", required=required, metavar="FILE", help="the run's YAML configuration")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set problems.target=10 (repeatable; values are YAML)",
    )


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser, required=True)
    parser.add_argument("--no-ray", action="store_true", help="run backends and the sandbox in this process")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run whose recipe (config fingerprint) differs from this configuration",
    )
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="drive the run even though another driver's lease on it has not lapsed (that driver stops)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress bars")
    parser.add_argument("--json", action="store_true", help="also print the run report as one JSON line on stdout")


def _interrupt_on_sigterm() -> None:
    """`ray job stop` and schedulers send SIGTERM: treat it like Ctrl-C, so batches in flight are
    committed and sandbox containers removed before the process ends."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _run(args: argparse.Namespace) -> int:
    from generator.config import load_config
    from generator.pipeline import Pipeline
    from generator.report import render_report

    overrides = list(args.overrides) + (["ray.enabled=false"] if args.no_ray else [])
    cfg = load_config(args.config, overrides)
    _interrupt_on_sigterm()
    console = Console(stderr=True)
    report = Pipeline(
        cfg,
        console=console,
        progress=False if args.no_progress else None,
        allow_config_change=args.allow_config_change,
        take_over=args.take_over,
    ).run()
    render_report(report, console)
    if args.json:
        print(report.model_dump_json())
    return 0


@cli_entry
def generate_main(argv: list[str] | None = None) -> int:
    """`selfinstruct generate ...`"""
    parser = argparse.ArgumentParser(
        prog="selfinstruct generate", description="Run (or resume) the self-instruct pipeline."
    )
    _add_run_args(parser)
    return _run(parser.parse_args(argv))


def _report(args: argparse.Namespace) -> int:
    from db import queries
    from db.engine import make_engine
    from generator.report import build_report, default_plot_path, plot_funnel, render_report

    if args.config:
        from generator.config import load_config

        cfg = load_config(args.config, args.overrides)
        db_url, run = args.db or cfg.db, args.run or cfg.run
    else:
        if not (args.db and args.run):
            raise UserError("report needs --config FILE, or both --db URL and --run NAME")
        db_url, run = args.db, args.run
    engine = make_engine(db_url, must_exist=True)
    report = build_report(engine, queries.get_run_id(engine, run))
    report.plot_path = str(plot_funnel(report, args.plot or default_plot_path(db_url, run)))
    render_report(report, Console())
    if args.json:
        print(report.model_dump_json())
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """`python -m generator run|report ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m generator", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) the pipeline", description="Run (or resume) the pipeline.")
    _add_run_args(run)
    report = commands.add_parser("report", help="print a run's report and write its funnel plot")
    _config_args(report, required=False)
    report.add_argument("--db", metavar="URL", help="database URL (default: the config's)")
    report.add_argument("--run", metavar="NAME", help="run name (default: the config's)")
    report.add_argument("--plot", metavar="PNG", help="where to write the funnel plot (default: next to the database)")
    report.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    args = parser.parse_args(argv)
    return _run(args) if args.command == "run" else _report(args)
