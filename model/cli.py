"""`selfinstruct model init|convert|info`: make, convert and inspect Llama checkpoints."""

from __future__ import annotations

import argparse
import json

from selfinstruct.errors import UserError, cli_entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct model", description="Llama 2 / Code Llama checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write random weights and a tiny trained tokenizer (demos, tests)")
    init.add_argument("--preset", required=True, help="e.g. tiny, small, codellama-7b")
    init.add_argument("--out", required=True, help="output directory")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--format", choices=("hf", "meta"), default="hf")
    convert = sub.add_parser("convert", help="convert a checkpoint to Meta, Hugging Face or GGUF (llama.cpp) format")
    convert.add_argument("src")
    convert.add_argument("dst", help="output directory (hf, meta) or .gguf file (gguf)")
    convert.add_argument("--to", choices=("hf", "meta", "gguf"), required=True)
    convert.add_argument("--dtype", choices=("f32", "f16", "bf16"),
                         help="gguf only: weight type (default f32; norms stay f32)")
    convert.add_argument("--tokenizer", help="gguf only: tokenizer.model to embed when SRC has none")
    info = sub.add_parser("info", help="print a checkpoint's format, shapes and parameter count as JSON")
    info.add_argument("path")
    sub.add_parser("presets", help="list the named presets with their parameter counts")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "presets":
        from model.args import PRESETS

        for name, preset in sorted(PRESETS.items()):
            print(f"{name:<24} {preset.num_params() / 1e9:8.3f}B  dim={preset.dim} layers={preset.n_layers} "
                  f"heads={preset.n_heads}/{preset.kv_heads} vocab={preset.vocab_size} rope_theta={preset.rope_theta:g}")
        return 0
    if args.command == "init":
        from model.init import init_checkpoint

        print(init_checkpoint(args.preset, args.out, seed=args.seed, fmt=args.format))
        return 0
    if args.command == "convert":
        if args.to == "gguf":
            from model.gguf_export import export_gguf

            print(export_gguf(args.src, args.dst, dtype=args.dtype or "f32", tokenizer_path=args.tokenizer))
            return 0
        if args.dtype or args.tokenizer:
            raise UserError("--dtype and --tokenizer apply to --to gguf only (hf and meta copy weights bit-exact)")
        from model.checkpoint import convert

        print(convert(args.src, args.dst, args.to))
        return 0
    from pathlib import Path

    from model.checkpoint import TOKENIZER_FILE, inspect_checkpoint, load_tokenizer

    fmt, shapes, dtype = inspect_checkpoint(args.path)
    report = {"path": args.path, "format": fmt, "args": shapes.to_dict(), "hidden_dim": shapes.hidden_dim,
              "num_params": shapes.num_params(), "dtype": dtype}

    if (Path(args.path) / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(args.path)
        report["tokenizer"] = {"vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                               "eos_id": tokenizer.eos_id, "infilling": tokenizer.has_infilling}
    print(json.dumps(report, indent=2))
    return 0
