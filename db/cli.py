"""`selfinstruct db upgrade|stats|runs`: schema migrations and the per-run funnel.

    selfinstruct db upgrade --db sqlite:///runs/db.sqlite     # create, or migrate to the newest schema
    selfinstruct db stats   --db runs/db.sqlite [--run NAME] [--json]
    selfinstruct db runs    --db runs/db.sqlite

--db defaults to $SELFINSTRUCT_DB; a plain path means a SQLite file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from selfinstruct.errors import UserError, cli_entry


def _db_arg(parser: argparse.ArgumentParser) -> None:
    from db.engine import env_url

    default = env_url()
    parser.add_argument(
        "--db",
        default=default,
        required=default is None,
        help="SQLAlchemy URL or SQLite file path (default: $SELFINSTRUCT_DB)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfinstruct db", description="The pipeline database: migrations and statistics."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="create the database or migrate it to the newest schema")
    _db_arg(up)
    up.add_argument("--revision", default="head", help="target Alembic revision (default: head)")
    stats = sub.add_parser("stats", help="print the funnel (counts per stage) of each run")
    _db_arg(stats)
    stats.add_argument("--run", action="append", help="only this run (repeatable); default: every run")
    stats.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    stats.add_argument("--threshold", type=float, default=None,
                       help="the threshold rule's fraction in the per-rule counts (default 0.8)")
    runs = sub.add_parser("runs", help="list the runs")
    _db_arg(runs)
    return parser


def _upgrade(args: argparse.Namespace) -> int:
    from db.engine import display_url, make_engine, upgrade

    engine = make_engine(args.db)
    try:
        before, after = upgrade(engine, args.revision)
    finally:
        engine.dispose()
    if before == after:
        print(f"{display_url(engine)}: already at schema revision {after}")
    else:
        print(f"{display_url(engine)}: schema revision {before or '(empty)'} -> {after}")
    return 0


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def format_funnel(f: dict[str, Any]) -> str:
    """The funnel as a small text table (one stage per line)."""
    run, p, t, s, e, tr = f["run"], f["problems"], f["tests"], f["solutions"], f["executions"], f["triples"]
    driver = ""
    if run.get("driver"):
        driver = f", driven by {run['driver']}, last heartbeat {run['heartbeat_age_s']:.0f} s ago"
    lines = [
        f"run {run['name']} (id {run['id']}, {run['status']}, code {run['code_version']}{driver})",
        f"  problems    calls {p['calls']}, parsed {p['parsed']}, exact duplicates {p['exact_duplicates']}, "
        f"stored {p['stored']}: accepted {p['accepted']}, near-duplicate {p['near_duplicate']}, contaminated {p['contaminated']}",
        f"  tests       done {t['done']}, failed {t['failed']} ({_fmt_counts(t['failures'])}), pending {t['pending']}; "
        f"{t['tests']} asserts",
        f"  solutions   problems done {s['problems_done']}, failed {s['problems_failed']}, pending {s['problems_pending']}; "
        f"samples {s['samples']} ({_fmt_counts(s['parse'])})",
        f"  executions  {e['executed']} run, {e['pending']} pending ({_fmt_counts(e['outcomes'])}); "
        f"pass rate {e['pass_rate']:.1%}; problems with a pass {e['problems_with_pass']}",
        f"  triples     {tr['count']} ({_fmt_counts(tr['by_rule'])})",
    ]
    for stage, tok in f["tokens"].items():
        lines.append(
            f"  tokens      {stage:<9} {tok['calls']} calls, {tok['prompt_tokens']} in, {tok['completion_tokens']} out, "
            f"{tok['latency_s']:.1f} s"
        )
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    from db import queries, selection
    from db.engine import display_url, make_engine, require_schema

    threshold = selection.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    selection.check_fraction("--threshold", threshold)
    engine = make_engine(args.db, must_exist=True)
    try:
        require_schema(engine)
        names = args.run or queries.run_names(engine)
        if not names:
            print(f"{display_url(engine)}: no runs yet")
            return 0
        for i, name in enumerate(names):
            run_id = queries.get_run_id(engine, name)
            f = queries.funnel(engine, run_id)
            f["selection"] = selection.summary(engine, run_id, threshold, selection.run_seed(engine, run_id))
            if args.json:
                print(json.dumps(f))
            else:
                print(("\n" if i else "") + format_funnel(f) + "\n" + "\n".join(selection.format_summary(f["selection"])))
    finally:
        engine.dispose()
    return 0


def _runs(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from db.engine import make_engine, read_transaction, require_schema
    from db.lease import holder_age_s
    from db.models import Run

    engine = make_engine(args.db, must_exist=True)
    try:
        require_schema(engine)
        with read_transaction(engine) as conn:
            rows = conn.execute(
                sa.select(
                    Run.id, Run.name, Run.status, Run.code_version, Run.created_at, Run.finished_at, Run.driver,
                    Run.heartbeat_at,
                ).order_by(Run.id)
            ).all()
    finally:
        engine.dispose()
    for r in rows:
        driver = f"\tdriven by {r.driver} (last heartbeat {holder_age_s(r.heartbeat_at):.0f} s ago)" if r.driver else ""
        print(
            f"{r.id}\t{r.name}\t{r.status}\t{r.code_version}\tcreated {r.created_at}\tfinished {r.finished_at or '-'}"
            + driver
        )
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "upgrade":
        return _upgrade(args)
    if args.command == "stats":
        return _stats(args)
    if args.command == "runs":
        return _runs(args)
    raise UserError(f"unknown db command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
