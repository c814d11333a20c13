"""`selfinstruct SUBCOMMAND ...`: one console script, each subcommand owned by its package.

Subcommands are imported lazily so that `selfinstruct db stats` does not pay for importing torch.
Each target is a `main(argv: list[str]) -> int` function in the owning package.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("model.cli", "Llama 2 / Code Llama checkpoints: init, convert, info"),
    "sandbox": ("executor.cli", "the Docker sandbox: build the image, run jobs"),
    "db": ("db.cli", "the database: upgrade (migrations), stats"),
    "generate": ("generator.cli:generate_main", "run (or resume) the self-instruct pipeline"),
    "export": ("db.export:main", "export triples (JSONL, Llama 2 chat), preference pairs or RL prompts (Parquet)"),
    "select": ("db.selection:main", "apply a selection rule to a run's stored executions (nothing re-executed)"),
    "finetune": ("finetune.cli", "instruct fine-tuning of the project's own model"),
    "eval": ("evaluation.cli", "pass@k of a model or samples file in the sandbox; Table 8 comparison"),
}


def _usage() -> str:
    lines = ["usage: selfinstruct COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `selfinstruct COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, func_name or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
