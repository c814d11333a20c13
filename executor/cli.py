"""`selfinstruct sandbox build | run | clean`: the sandbox image, running job files, removing containers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from executor.jobs import OUTCOMES, Job
from selfinstruct.errors import UserError, cli_entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build the sandbox image offline (debootstrap) or adopt an image")
    build.add_argument("--from-image", metavar="NAME", help="start from this image (needs python3) instead")
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    build.add_argument("--mirror", help="Debian mirror for debootstrap (default: deb.debian.org)")

    run = sub.add_parser("run", help="run a JSONL file of jobs, write one result line per job")
    run.add_argument("jobs", type=Path, help='JSONL: {"id": str, "solution": str, "tests": [str, ...]} per line')
    run.add_argument("-o", "--output", type=Path, help="results JSONL (default: stdout)")
    run.add_argument("--workers", type=int, help="warm containers (default: one per core)")
    run.add_argument("--timeout", type=float, help="wall-clock seconds per job (default 10)")
    run.add_argument("--memory-mb", type=int, help="memory per job in MB (default 512)")
    run.add_argument("--image", help="sandbox image (default selfinstruct-sandbox:latest)")
    run.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default runc; runsc = gVisor, see setup.sh)"
    )
    run.add_argument("--resume", action="store_true", help="skip jobs whose id already has a line in --output")

    clean = sub.add_parser("clean", help="remove every sandbox container (labeled selfinstruct.sandbox)")
    clean.add_argument(
        "--stale",
        action="store_true",
        help="only containers whose owning process on this host has exited (safe while pools run)",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        return _build(args)
    if args.command == "run":
        return _run(args)
    return _clean(args)


def _build(args: argparse.Namespace) -> int:
    from executor import image

    client = image.connect()
    image.build(
        client,
        from_image=args.from_image,
        force=args.force,
        mirror=args.mirror,
        log=lambda message: print(message, file=sys.stderr),
    )
    return 0


def _clean(args: argparse.Namespace) -> int:
    from executor import image
    from executor.sandbox import remove_containers

    removed = remove_containers(image.connect(), stale_only=args.stale)
    print(f"removed {removed} sandbox container(s)", file=sys.stderr)
    return 0


def read_jobs(path: Path, errors: list[str], skip_ids: set[str] | frozenset[str] = frozenset()) -> Iterator[Job]:
    """Jobs from a JSONL file, lazily; a malformed line is reported into `errors` and skipped."""
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                job = Job.model_validate_json(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "line"
                errors.append(f"{path}:{number}: {where}: {first['msg']}")
                continue
            if job.id in seen:
                errors.append(f"{path}:{number}: duplicate id {job.id!r}")
                continue
            seen.add(job.id)
            if job.id not in skip_ids:
                yield job


def _finished_ids(path: Path) -> set[str]:
    """Ids with a verdict in an earlier output. `sandbox_error` lines do not count: those jobs run again."""
    ids = set()
    with path.open("rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
                if row["outcome"] != "sandbox_error":
                    ids.add(row["id"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that job runs again
    return ids


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from executor.sandbox import Sandbox, SandboxConfig

    if not args.jobs.is_file():
        raise UserError(f"jobs file not found: {args.jobs}")
    overrides = {"workers": args.workers, "timeout_s": args.timeout, "memory_mb": args.memory_mb, "image": args.image}
    overrides["runtime"] = args.runtime
    try:
        cfg = SandboxConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"invalid option {first['loc'][0]}: {first['msg']}") from exc
    skip = _finished_ids(args.output) if args.resume and args.output and args.output.exists() else set()
    total = sum(1 for line in args.jobs.open("rb") if line.strip())
    errors: list[str] = []
    counts: Counter[str] = Counter()
    out = args.output.open("a" if args.resume else "w", encoding="utf-8") if args.output else sys.stdout
    started = time.monotonic()
    try:
        with (
            Sandbox(cfg) as sandbox,
            tqdm(total=total, initial=len(skip), unit="job", file=sys.stderr, disable=None) as progress,
        ):
            reported = 0
            for result in sandbox.iter_results(read_jobs(args.jobs, errors, skip)):
                out.write(result.model_dump_json() + "\n")
                out.flush()  # a finished job's line is on disk before the next one is awaited
                counts[result.outcome] += 1
                progress.update(1)
                progress.set_postfix(passed=counts["passed"], refresh=False)
                while reported < len(errors):
                    progress.write(f"skipped {errors[reported]}", file=sys.stderr)
                    progress.update(1)
                    reported += 1
            while reported < len(errors):
                progress.write(f"skipped {errors[reported]}", file=sys.stderr)
                progress.update(1)
                reported += 1
    finally:
        if out is not sys.stdout:
            out.close()
    elapsed = time.monotonic() - started
    done = sum(counts.values())
    summary = ", ".join(f"{name} {counts[name]}" for name in OUTCOMES if counts[name])
    print(
        f"{done} jobs in {elapsed:.1f}s ({done / elapsed if elapsed else 0:.1f}/s): {summary or 'nothing run'}"
        + (f"; {len(skip)} already done" if skip else "")
        + (f"; {len(errors)} malformed line(s) skipped" if errors else ""),
        file=sys.stderr,
    )
    return 1 if errors else 0
