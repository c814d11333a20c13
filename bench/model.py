"""Speed of model/ against transformers on the same weights: generation (batch 1 and 8) and training.

One run, one JSON line. Both sides load the same HF directory written by `model.init_checkpoint`
("small": 58M parameters, 32000 vocabulary), get the same prompts and greedy decoding, and run
interleaved; each figure is the best of `--repeats` runs, which filters out the noise of a shared machine
(the load average is printed with the result). Training is forward + backward + AdamW on the same batch,
with the fused AdamW kernel on both sides (transformers' Trainer default, and finetune/'s).

Our side runs twice: as shipped (CPU fp32 products through oneDNN, `model.linear`) and with
`set_cpu_gemm("mkl")` (plain `F.linear`, the library transformers uses), so the line shows how much of the
ratio is the GEMM library and how much the rest of the code (static KV cache, no per-step mask building).

    .venv/bin/python bench/model.py [--preset small] [--new-tokens 32] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import load, load_tokenizer  # noqa: E402
from model.generate import generate  # noqa: E402
from model.init import init_checkpoint  # noqa: E402
from model.linear import set_cpu_gemm  # noqa: E402


def _best(fn, repeats: int) -> float:
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_generation(ours, theirs, tokenizer, batch: int, new_tokens: int, repeats: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = ours.args.vocab_size
    lengths = [48] if batch == 1 else [int(x) for x in torch.randint(32, 65, (batch,), generator=g)]
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    width = max(lengths)
    pad = tokenizer.pad_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    results: dict[str, list] = {}

    def run_ours() -> None:
        results["ours"] = generate(ours, tokenizer, prompts, max_new_tokens=new_tokens, max_batch_size=batch)

    def run_ours_mkl() -> None:
        set_cpu_gemm("mkl")
        try:
            results["ours_mkl"] = generate(ours, tokenizer, prompts, max_new_tokens=new_tokens, max_batch_size=batch)
        finally:
            set_cpu_gemm("onednn")

    def run_theirs() -> None:
        with torch.inference_mode():
            results["theirs"] = theirs.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                                do_sample=False, pad_token_id=pad)

    run_ours(), run_ours_mkl(), run_theirs()  # warm-up
    ours_s, mkl_s, theirs_s = [], [], []
    for _ in range(repeats):
        ours_s.append(_timed(run_ours))
        mkl_s.append(_timed(run_ours_mkl))
        theirs_s.append(_timed(run_theirs))
    ours_tokens = sum(o[0].completion_tokens for o in results["ours"])
    theirs_ids = results["theirs"][:, width:]
    match = all(o[0].token_ids == theirs_ids[i, :len(o[0].token_ids)].tolist()
                for key in ("ours", "ours_mkl") for i, o in enumerate(results[key]))
    ours_tps, mkl_tps, theirs_tps = (ours_tokens / min(ours_s), ours_tokens / min(mkl_s),
                                     batch * new_tokens / min(theirs_s))
    return {"batch": batch, "new_tokens": new_tokens, "ours_tok_s": round(ours_tps, 1),
            "ours_mkl_tok_s": round(mkl_tps, 1), "transformers_tok_s": round(theirs_tps, 1),
            "ratio": round(ours_tps / theirs_tps, 2), "ratio_mkl": round(mkl_tps / theirs_tps, 2),
            "ours_completion_tokens": ours_tokens, "greedy_tokens_match": match}


def bench_training(ours, theirs, batch: int, seq: int, steps: int) -> dict:
    vocab = ours.args.vocab_size
    tokens = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    ours.train(), theirs.train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step_ours() -> None:
        logits = ours(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_ours_mkl() -> None:
        set_cpu_gemm("mkl")
        try:
            step_ours()
        finally:
            set_cpu_gemm("onednn")

    def step_theirs() -> None:
        loss = theirs(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    step_ours(), step_ours_mkl(), step_theirs()  # warm-up (optimizer state allocation)
    ours_s, mkl_s, theirs_s = [], [], []
    for _ in range(steps):
        ours_s.append(_timed(step_ours))
        mkl_s.append(_timed(step_ours_mkl))
        theirs_s.append(_timed(step_theirs))
    n_tokens = batch * (seq - 1)
    ours_tps, mkl_tps, theirs_tps = n_tokens / min(ours_s), n_tokens / min(mkl_s), n_tokens / min(theirs_s)
    return {"batch": batch, "seq": seq, "ours_tok_s": round(ours_tps, 1), "ours_mkl_tok_s": round(mkl_tps, 1),
            "transformers_tok_s": round(theirs_tps, 1), "ratio": round(ours_tps / theirs_tps, 2),
            "ratio_mkl": round(mkl_tps / theirs_tps, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-seq", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        path = init_checkpoint(opts.preset, Path(tmp) / opts.preset, seed=0)
        ours, tokenizer = load(path), load_tokenizer(path)
        theirs = LlamaForCausalLM.from_pretrained(path).eval()
    result: dict = {"bench": "model", "device": "cpu", "threads": torch.get_num_threads(),
                    "load_avg_before": round(os.getloadavg()[0], 2), "preset": opts.preset,
                    "params": ours.args.num_params(), "torch": torch.__version__}
    import transformers

    result["transformers"] = transformers.__version__
    for batch in (1, 8):
        result[f"generate_b{batch}"] = bench_generation(ours, theirs, tokenizer, batch, opts.new_tokens,
                                                        opts.repeats, seed=batch)
    result["train"] = bench_training(ours, theirs, opts.train_batch, opts.train_seq, opts.train_steps)
    result["ratios"] = {f"{key}{suffix}": result[part][f"ratio{suffix}"] for suffix in ("", "_mkl")
                        for key, part in (("generate_b1", "generate_b1"), ("generate_b8", "generate_b8"),
                                          ("train", "train"))}
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
