"""One-shot GPU check of model/: parity with transformers on CUDA, 7B decode speed, ~1B training MFU.

Self-contained for a fresh, offline GPU machine that has CUDA torch (transformers optional: without it
the parity section reports an error and the rest still runs). Needs only this repository on disk:

    python bench/gpu_check.py                 # on the GPU machine, about 2-4 minutes
    python bench/gpu_check.py --cpu-smoke     # tiny shapes on CPU, seconds: checks the script itself

Sections (each in its own try/except; the JSON line is always printed, and written to
$OUT/gpu_check.json when OUT is set):
- parity: a small random Llama (GQA, rope_theta 1e6) built by transformers, loaded into model/ through
  the HF->Meta conversion; max |logit diff| in fp32 and bf16, greedy 32-token agreement, KV-cache check.
- decode_7b: llama2-7b shapes, random bf16 weights initialised on the GPU, batch 1; tokens/s eager and
  with torch.compile(mode="reduce-overhead") (CUDA graphs, gpt-fast's recipe), as a fraction of the
  memory-bandwidth bound (weight bytes read per token / HBM bandwidth, measured and nominal).
- train_1b: ~1B-parameter shapes, fp32 master weights + bf16 autocast, fused AdamW; tokens/s and MFU
  (6 * N * tokens/s / peak dense bf16 FLOPs; also with the attention term).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.args import ModelArgs  # noqa: E402
from model.transformer import Transformer  # noqa: E402

# Nominal dense bf16 peak (FLOP/s) and HBM bandwidth (bytes/s), by device-name substring, most specific first.
_NOMINAL = [
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.04e12),
    ("A100 80GB PCIe", 312e12, 1.94e12),
    ("A100", 312e12, 1.56e12),
    ("L40S", 362e12, 0.864e12),
    ("A10G", 70e12, 0.6e12),
]


def nominal(device_name: str) -> tuple[float | None, float | None]:
    for key, flops, bandwidth in _NOMINAL:
        if key in device_name:
            return flops, bandwidth
    return None, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int = 0, std: float = 0.02) -> Transformer:
    """Random weights created directly on `device` in `dtype` (a 7B model never touches host memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    return model.init_weights(seed=seed, std=std).eval()


# ----------------------------------------------------------------------------------------------------


def check_parity(device: torch.device, smoke: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.checkpoint import hf_to_meta

    args = ModelArgs(dim=64 if smoke else 512, n_layers=2 if smoke else 4, n_heads=4 if smoke else 8,
                     n_kv_heads=2 if smoke else 4, vocab_size=512 if smoke else 4096, multiple_of=32,
                     rope_theta=1e6, max_seq_len=1024)
    config = LlamaConfig(hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                         num_key_value_heads=args.kv_heads, intermediate_size=args.hidden_dim,
                         vocab_size=args.vocab_size, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                         max_position_embeddings=args.max_seq_len, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    theirs = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in theirs.parameters():
            param.normal_(0.0, 0.05) if param.ndim == 2 else param.uniform_(0.5, 1.5)
    theirs = theirs.to(device).eval()
    ours = Transformer(args)
    ours.load_state_dict(hf_to_meta(theirs.state_dict(), args))
    ours = ours.to(device).eval()
    tokens = torch.randint(0, args.vocab_size, (2, 128 if smoke else 512), device=device)
    result: dict = {"config": {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
                               "n_kv_heads": args.kv_heads, "vocab": args.vocab_size, "rope_theta": args.rope_theta}}
    with torch.inference_mode():
        reference = theirs(tokens).logits.float()  # fp32 truth for judging bf16
        ours32 = ours(tokens).float()
        diff = (ours32 - reference).abs().max().item()
        scale = reference.abs().max().item()
        result["float32"] = {"max_abs_diff": diff, "max_abs_logit": scale, "ok": diff <= 1e-4 * max(scale, 1.0)}
        # bf16: rounding makes both implementations drift from fp32; ours (fp32 rotary, as Meta's) must
        # drift no more than transformers' (bf16 rotary) does.
        ours16, theirs16 = ours.to(torch.bfloat16)(tokens).float(), theirs.to(torch.bfloat16)(tokens).logits.float()
        ours_err = (ours16 - reference).abs().max().item()
        theirs_err = (theirs16 - reference).abs().max().item()
        result["bfloat16"] = {"ours_vs_fp32_max_abs": ours_err, "transformers_vs_fp32_max_abs": theirs_err,
                              "ours_vs_transformers_max_abs": (ours16 - theirs16).abs().max().item(),
                              "ok": ours_err <= 1.25 * theirs_err + 1e-3}
        ours, theirs = ours.float(), theirs.float()
        prompt = tokens[:1, :16]
        theirs.generation_config.eos_token_id = None
        expected = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                   do_sample=False, pad_token_id=0)[0, 16:].tolist()
        ours.setup_cache(1, 48)
        logits = ours.forward_cached(prompt, torch.arange(16, device=device)[None], 0, last_only=True)
        got = []
        for step in range(32):
            token = logits[:, -1].argmax(-1, keepdim=True)
            got.append(int(token))
            logits = ours.forward_cached(token, torch.tensor([[16 + step]], device=device), 16 + step)
        ours.drop_cache()
        result["greedy_32_tokens_match"] = got == expected
        full = ours(tokens[:1, :48])
        ours.setup_cache(1, 48)
        cached = torch.cat([ours.forward_cached(tokens[:1, :16], torch.arange(16, device=device)[None], 0)] + [
            ours.forward_cached(tokens[:1, t:t + 1], torch.tensor([[t]], device=device), t) for t in range(16, 48)], 1)
        ours.drop_cache()
        result["kv_cache_max_abs_diff_fp32"] = (full - cached).abs().max().item()
    result["ok"] = bool(result["float32"]["ok"] and result["bfloat16"]["ok"] and result["greedy_32_tokens_match"]
                        and result["kv_cache_max_abs_diff_fp32"] < 1e-3)
    return result


def measure_bandwidth(device: torch.device, smoke: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s (each copy reads and writes every byte)."""
    nbytes = (64 if smoke else 2048) * 1024**2
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    repeats = 3 if smoke else 20
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - start)


def check_decode(device: torch.device, smoke: bool, use_compile: bool, deadline: float) -> dict:
    args = ModelArgs.from_preset("tiny" if smoke else "llama2-7b")
    dtype = torch.float32 if smoke else torch.bfloat16
    prompt_len, new_tokens = 32, 32 if smoke else 128
    model = build(args, device, dtype, std=0.08)  # peaked logits: greedy comparisons are not coin flips
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "tok_embeddings.weight")
    measured_bw = measure_bandwidth(device, smoke)
    _, nominal_bw = nominal(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    cache_len = prompt_len + new_tokens + 8
    kv_bytes = 2 * args.n_layers * args.kv_heads * args.head_dim * (prompt_len + new_tokens // 2) * model.output.weight.element_size()
    bytes_per_token = weight_bytes + kv_bytes
    result: dict = {"preset": "tiny" if smoke else "llama2-7b", "dtype": str(dtype).removeprefix("torch."),
                    "params": args.num_params(), "bytes_per_token": bytes_per_token,
                    "measured_bandwidth_gb_s": round(measured_bw / 1e9, 1),
                    "nominal_bandwidth_gb_s": None if nominal_bw is None else round(nominal_bw / 1e9, 1),
                    "prompt_len": prompt_len, "new_tokens": new_tokens}
    prompt = torch.randint(0, args.vocab_size, (1, prompt_len), device=device)

    def bound_fraction(tps: float) -> dict:
        out = {"tok_s": round(tps, 1), "fraction_of_measured_bw_bound": round(tps * bytes_per_token / measured_bw, 3)}
        if nominal_bw:
            out["fraction_of_nominal_bw_bound"] = round(tps * bytes_per_token / nominal_bw, 3)
        return out

    with torch.inference_mode():
        model.setup_cache(1, cache_len)
        logits = model.forward_cached(prompt, torch.arange(prompt_len, device=device)[None], 0, last_only=True)
        token = logits[:, -1].argmax(-1, keepdim=True)
        for warm in range(2):
            model.forward_cached(token, torch.tensor([[prompt_len + warm]], device=device), prompt_len + warm)
        first_token = token
        sync(device)
        start = time.perf_counter()
        eager_tokens = []
        for step in range(new_tokens):
            logits = model.forward_cached(token, torch.tensor([[prompt_len + step]], device=device), prompt_len + step)
            if step == 0:
                first_logits = logits[:, -1].float().clone()
            token = logits[:, -1].argmax(-1, keepdim=True)
            eager_tokens.append(token)
        sync(device)
        result["eager"] = bound_fraction(new_tokens / (time.perf_counter() - start))
        # the greedy sequence: the prefill's token, then one per decode step
        eager_ids = torch.cat([first_token] + eager_tokens).flatten().tolist()
        _profile_step(model, first_token, prompt_len, device)

    if not use_compile:
        result["compiled"] = "skipped"
    elif time.monotonic() > deadline:
        result["compiled"] = "skipped: out of time"
    else:
        try:
            result["compiled"] = _compiled_decode(model, prompt, first_token, first_logits, eager_ids, new_tokens,
                                                  device, result, bound_fraction)
        except Exception as exc:  # noqa: BLE001 - keep the eager numbers when compilation fails
            result["compiled"] = f"error: {exc.__class__.__name__}: {exc}"[:300]
    if time.monotonic() < deadline + 60:
        try:
            result["transformers_eager"] = _transformers_decode(model, args, prompt, new_tokens, eager_ids, device)
        except Exception as exc:  # noqa: BLE001
            result["transformers_eager"] = f"error: {exc.__class__.__name__}: {exc}"[:300]
    model.drop_cache()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _compiled_decode(model: Transformer, prompt: torch.Tensor, first_token: torch.Tensor, first_logits: torch.Tensor,
                     eager_ids: list[int], new_tokens: int, device: torch.device, result: dict, bound_fraction) -> dict:
    """Greedy decode through torch.compile(decode_step, mode=\"reduce-overhead\"): one CUDA graph per step."""
    prompt_len = prompt.shape[1]
    step_fn = torch.compile(model.decode_step, mode="reduce-overhead", fullgraph=True)
    with torch.inference_mode():
        compile_start = time.perf_counter()
        # Re-run the same greedy decode through the compiled graph; tokens must match eager's.
        token = model.forward_cached(prompt, torch.arange(prompt_len, device=device)[None], 0,
                                     last_only=True)[:, -1].argmax(-1, keepdim=True)
        for warm in range(3):  # compile, then CUDA-graph recording
            step_fn(token, torch.tensor([[prompt_len]], device=device), torch.tensor([prompt_len], device=device))
        sync(device)
        result["compile_s"] = round(time.perf_counter() - compile_start, 1)
        start = time.perf_counter()
        compiled_ids = []
        for step in range(new_tokens):
            pos = prompt_len + step
            logits = step_fn(token, torch.tensor([[pos]], device=device), torch.tensor([pos], device=device))
            token = logits[:, -1].argmax(-1, keepdim=True)
            compiled_ids.append(token)
        sync(device)
        compiled_result = bound_fraction(new_tokens / (time.perf_counter() - start))
        ids = torch.cat([first_token] + compiled_ids).flatten().tolist()
        compiled_result["same_tokens_as_eager"] = _agreement(ids, eager_ids)
        # Random weights give near-tied logits, so tokens may diverge on rounding: compare logits too.
        model.forward_cached(prompt, torch.arange(prompt_len, device=device)[None], 0, last_only=True)
        pos = torch.tensor([prompt_len], device=device)
        compiled_logits = step_fn(first_token, pos[None], pos)[:, -1].float()
        compiled_result["first_step_logits_max_abs_diff_vs_eager"] = (compiled_logits - first_logits).abs().max().item()
        compiled_result["max_abs_logit"] = first_logits.abs().max().item()
    return compiled_result


def _profile_step(model: Transformer, token: torch.Tensor, pos: int, device: torch.device) -> None:
    """Top ops of one eager decode step, to $OUT/decode_profile.txt (where eager time goes)."""
    out_dir = os.environ.get("OUT")
    if not out_dir or device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.forward_cached(token, torch.tensor([[pos]], device=device), pos)
        sync(device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    (Path(out_dir) / "decode_profile.txt").write_text(table)


def _transformers_decode(model: Transformer, args: ModelArgs, prompt: torch.Tensor, new_tokens: int,
                         eager_ids: list[int], device: torch.device) -> dict:
    """transformers' eager greedy decode on the same 7B weights, for the eager-vs-eager ratio."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.checkpoint import meta_to_hf

    config = LlamaConfig(hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                         num_key_value_heads=args.kv_heads, intermediate_size=args.hidden_dim,
                         vocab_size=args.vocab_size, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                         max_position_embeddings=args.max_seq_len, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            hf = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    hf.load_state_dict(meta_to_hf(model.state_dict(), args))
    hf.eval().generation_config.eos_token_id = None
    kwargs = dict(attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        hf.generate(prompt, max_new_tokens=4, **kwargs)
        sync(device)
        start = time.perf_counter()
        out = hf.generate(prompt, max_new_tokens=new_tokens, **kwargs)
        sync(device)
    elapsed = time.perf_counter() - start
    ids = out[0, prompt.shape[1]:].tolist()
    del hf
    torch.cuda.empty_cache()
    return {"tok_s": round(new_tokens / elapsed, 1), "same_tokens_as_ours_eager": _agreement(ids, eager_ids)}


def _agreement(a: list[int], b: list[int]) -> float:
    """Fraction of the greedy sequence that agrees before the first difference (1.0: identical)."""
    n = min(len(a), len(b))
    first_diff = next((i for i in range(n) if a[i] != b[i]), n)
    return round(first_diff / n, 3)


def check_generate(device: torch.device, smoke: bool, use_compile: bool) -> dict:
    """model.generate on the device: batched, left-padded prompts; compiled decode must give eager's tokens."""
    from model.generate import generate
    from model.tokenizer import Tokenizer
    from model.tokenizer_train import train_tokenizer_bytes

    tokenizer = Tokenizer(model_proto=train_tokenizer_bytes(512))
    args = ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=512, multiple_of=32)
    model = build(args, device, torch.float32, std=0.08)
    prompts = ["def fib(n):", "Write a Python function to get the unique elements of a list.\n", "x = "]
    start = time.perf_counter()
    eager = generate(model, tokenizer, prompts, n=2, max_new_tokens=48)
    eager_s = time.perf_counter() - start
    result = {"eager_s": round(eager_s, 2), "rows": 6, "new_tokens": 48}
    sampled = generate(model, tokenizer, prompts, n=2, temperature=0.8, top_p=0.95, seed=1, max_new_tokens=16)
    again = generate(model, tokenizer, prompts, n=2, temperature=0.8, top_p=0.95, seed=1, max_new_tokens=16)
    result["seeded_sampling_reproducible"] = [[o.token_ids for o in p] for p in sampled] == [[o.token_ids for o in p] for p in again]
    if use_compile:
        start = time.perf_counter()
        generate(model, tokenizer, prompts, n=2, max_new_tokens=48, compile=True)  # compiles
        result["compile_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        compiled = generate(model, tokenizer, prompts, n=2, max_new_tokens=48, compile=True)
        result["compiled_s"] = round(time.perf_counter() - start, 2)
        result["compiled_same_tokens"] = [[o.token_ids for o in p] for p in compiled] == [[o.token_ids for o in p] for p in eager]
    return result


def check_training(device: torch.device, smoke: bool) -> dict:
    args = (ModelArgs.from_preset("tiny") if smoke else
            ModelArgs(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, max_seq_len=2048))
    batch, seq, steps = (2, 64, 2) if smoke else (4, 2048, 8)
    model = build(args, device, torch.float32).train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with autocast:
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync(device)
    tokens_per_s = batch * seq * steps / (time.perf_counter() - start)
    n_matmul = args.num_params() - args.vocab_size * args.dim  # the embedding lookup does no FLOPs
    flops_6n = 6 * n_matmul * tokens_per_s
    flops_attn = flops_6n + 12 * args.n_layers * args.dim * seq * tokens_per_s
    peak, _ = nominal(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    result = {"params": args.num_params(), "batch": batch, "seq": seq, "steps": steps,
              "precision": "fp32 weights, bf16 autocast" if device.type == "cuda" else "fp32",
              "tok_s": round(tokens_per_s, 1), "tflops_6n": round(flops_6n / 1e12, 1),
              "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)]}
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 1)
    if peak:
        result["peak_tflops"] = peak / 1e12
        result["mfu_6n"] = round(flops_6n / peak, 3)
        result["mfu_with_attention"] = round(flops_attn / peak, 3)
    del model, optimizer
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="GPU check of model/ (parity, 7B decode, 1B training MFU)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: exercise the script")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile decode measurement")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip compile when past this many seconds")
    opts = parser.parse_args()
    started = time.monotonic()
    smoke = opts.cpu_smoke
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    report: dict = {"check": "gpu_check", "smoke": smoke, "device": str(device), "torch": torch.__version__,
                    "errors": {}}
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001
        report["transformers"] = None
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["cuda"] = torch.version.cuda
    elif not smoke:
        report["errors"]["device"] = "no CUDA device visible: ran the CPU-sized check instead"
        smoke = True
    sections = {
        "parity": lambda: check_parity(device, smoke),
        "decode_7b": lambda: check_decode(device, smoke, use_compile=not opts.no_compile and device.type == "cuda",
                                          deadline=started + opts.budget_s - 90),
        "train_1b": lambda: check_training(device, smoke),
        "generate": lambda: check_generate(device, smoke, use_compile=not opts.no_compile and device.type == "cuda"),
    }
    for name, run in sections.items():
        section_start = time.monotonic()
        try:
            report[name] = run()
        except Exception as exc:  # noqa: BLE001 - report and go on: one JSON line no matter what
            report["errors"][name] = f"{exc.__class__.__name__}: {exc}"[:500]
            report.setdefault("tracebacks", {})[name] = traceback.format_exc()[-2000:]
        report.setdefault("section_s", {})[name] = round(time.monotonic() - section_start, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    line = json.dumps(report)
    print(line, flush=True)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "gpu_check.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
