"""Benchmark of the LLM backends; prints ONE JSON line. Not part of the test run.

1. The built-in backend (generator/backends/torch_backend.py) against calling model/ directly on the
   same prompts and sampling parameters: generated tokens per second, the same tokens both ways.
   Also with a distinct seed per request (what a resumable pipeline sends), which `model.generate`
   cannot batch across prompts (one seed per call), and optionally through a Ray `LLMPool`.
2. The OpenAI-compatible backend against a local server that takes `--http-delay-ms` per request
   (standing in for generation time), against a plain sequential httpx client: requests per second.

    .venv/bin/python bench/backends.py                       # tiny random model on CPU
    .venv/bin/python bench/backends.py --preset small --device cuda --dtype bfloat16 --requests 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "backends")]  # the loopback server lives with the tests


def _timed(fn, repeats: int):
    """(result of the last call, best wall time of `repeats` calls) after one warm-up call."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return result, best


def bench_torch(args: argparse.Namespace) -> dict:
    import torch

    from generator.backends import GenerationRequest, TorchBackendConfig, make_backend
    from model.checkpoint import load, load_tokenizer
    from model.generate import generate
    from model.init import init_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # as in a Ray actor with num_cpus=1 (OMP_NUM_THREADS=1)
    checkpoint = init_checkpoint(args.preset, Path(tempfile.mkdtemp(prefix="bench-backends-")), seed=0)
    prompts = [f"[INST] Write a Python function number {i} that adds two numbers. [/INST]" for i in range(args.requests)]
    sampling = dict(n=args.n, temperature=0.8, top_p=0.95)
    batch_rows = args.requests * args.n

    model, tokenizer = load(checkpoint, device=args.device, dtype=getattr(torch, args.dtype)), load_tokenizer(checkpoint)

    def direct():
        out = generate(model, tokenizer, prompts, max_new_tokens=args.max_tokens, seed=7, max_batch_size=batch_rows,
                       **sampling)
        return sum(o.completion_tokens for per_prompt in out for o in per_prompt)

    direct_tokens, direct_s = _timed(direct, args.repeats)

    cfg = TorchBackendConfig(checkpoint=str(checkpoint), device=args.device, dtype=args.dtype, batch_size=batch_rows)
    backend = make_backend(cfg)
    same_seed = [GenerationRequest(prompt=p, max_tokens=args.max_tokens, seed=7, **sampling) for p in prompts]
    own_seeds = [GenerationRequest(prompt=p, max_tokens=args.max_tokens, seed=1000 + i, **sampling)
                 for i, p in enumerate(prompts)]

    def through(requests, target=backend):
        return sum(c.completion_tokens for cs in target.generate(requests) for c in cs)

    backend_tokens, backend_s = _timed(lambda: through(same_seed), args.repeats)
    seeds_tokens, seeds_s = _timed(lambda: through(own_seeds), args.repeats)
    backend.close()
    result = {
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "requests": args.requests,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "direct_tokens_per_s": round(direct_tokens / direct_s, 1),
        "backend_tokens_per_s": round(backend_tokens / backend_s, 1),
        "backend_vs_direct": round((backend_tokens / backend_s) / (direct_tokens / direct_s), 3),
        "same_tokens": backend_tokens == direct_tokens,
        "backend_own_seeds_tokens_per_s": round(seeds_tokens / seeds_s, 1),
    }
    if args.ray:
        from generator.ray_cluster import ensure_ray
        from generator.scale import LLMPool

        ensure_ray(address="local", num_cpus=2)
        with LLMPool(cfg, replicas=1, chunk_size=len(same_seed)) as pool:
            pool_tokens, pool_s = _timed(lambda: through(same_seed, pool), args.repeats)
        result["ray_pool_tokens_per_s"] = round(pool_tokens / pool_s, 1)
    return result


def bench_openai(args: argparse.Namespace) -> dict:
    import httpx
    from completion_server import CompletionServer, ServerState

    from generator.backends import GenerationRequest, OpenAIBackendConfig, make_backend
    from generator.backends.openai import request_body

    requests = [GenerationRequest(prompt=f"problem {i}", n=1, max_tokens=16, seed=i) for i in range(args.http_requests)]
    with CompletionServer(ServerState(model="bench", delay_s=args.http_delay_ms / 1000)) as server:
        url = server.base_url + "/completions"
        with httpx.Client(timeout=30) as client:
            started = time.perf_counter()
            for r in requests:
                client.post(url, json=request_body("bench", r)).raise_for_status()
            sequential_s = time.perf_counter() - started
        cfg = OpenAIBackendConfig(base_url=server.base_url, model="bench", concurrency=args.concurrency)
        with make_backend(cfg) as backend:
            started = time.perf_counter()
            out = backend.generate(requests)
            backend_s = time.perf_counter() - started
        assert len(out) == len(requests)
        max_in_flight = server.state.max_in_flight
    return {
        "requests": len(requests),
        "server_delay_ms": args.http_delay_ms,
        "concurrency": args.concurrency,
        "sequential_client_rps": round(len(requests) / sequential_s, 1),
        "backend_rps": round(len(requests) / backend_s, 1),
        "backend_vs_sequential": round(sequential_s / backend_s, 2),
        "server_max_in_flight": max_in_flight,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (Ray gives an actor one per CPU)")
    parser.add_argument("--ray", action="store_true", help="also measure through a one-actor Ray LLMPool")
    parser.add_argument("--http-requests", type=int, default=200)
    parser.add_argument("--http-delay-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    line = {"bench": "backends"}
    if not args.skip_torch:
        line["torch"] = bench_torch(args)
    line["openai"] = bench_openai(args)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
