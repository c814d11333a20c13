"""`selfinstruct finetune` / `python -m finetune`: instruct fine-tuning on exported triples.

    selfinstruct finetune --config finetune.yaml --data export.jsonl --model checkpoints/codellama-7b \
        --out runs/ft1 --set optim.lr=2e-5 --set train.max_steps=2000
    torchrun --nproc-per-node 8 -m finetune --config finetune.yaml ...     (FSDP2, one process per GPU)
    selfinstruct finetune --config finetune.yaml --launcher ray --num-workers 8 --use-gpu

Paths are made absolute before the run, so Ray workers (which may start elsewhere) find them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from selfinstruct.errors import UserError, cli_entry

if TYPE_CHECKING:  # the config module is imported lazily so that `--help` stays fast
    from finetune.config import FinetuneConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfinstruct finetune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see docs/finetune.md); defaults apply without one")
    parser.add_argument("--data", action="append", metavar="PATH",
                        help="an export file (jsonl or chat format); repeat for several")
    parser.add_argument("--val-data", action="append", metavar="PATH",
                        help="a validation export (e.g. the NAME.val.jsonl of `export --split-val`); "
                             "without it data.val_fraction of --data is held out")
    parser.add_argument("--recipe", action="append", choices=["warmup", "instruct"], metavar="{warmup,instruct}",
                        help="train on the bundled recipe corpus's train split too: `warmup` in the pipeline's three "
                             "stage formats (teaches a model to write problem lists, [TESTS] and [PYTHON] answers), "
                             "`instruct` as instruct examples; repeat for both")
    parser.add_argument("--model", help="checkpoint directory (Meta or HF layout) or a preset name")
    parser.add_argument("--out", help="output directory (checkpoints, metrics, final model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. optim.lr=3e-4 or data.packing=false")
    parser.add_argument("--launcher", choices=["local", "ray"], help="local (one process or torchrun) or ray")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers")
    parser.add_argument("--use-gpu", action="store_true", help="Ray Train workers take a GPU each")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop after N steps with a checkpoint (resume later with --resume)")
    return parser


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def build_config(args: argparse.Namespace) -> FinetuneConfig:
    from finetune.config import BUNDLED, load_config

    overrides = list(args.overrides)
    if args.data:
        overrides.append("data.paths=[" + ", ".join(f'"{_absolute(p)}"' for p in args.data) + "]")
    for part in args.recipe or []:
        overrides.append(f"data.recipe.{part}=true")
    if args.val_data:
        overrides.append("data.val_paths=[" + ", ".join(f'"{_absolute(p)}"' for p in args.val_data) + "]")
    if args.model:
        model = _absolute(args.model) if Path(args.model).exists() else args.model
        overrides.append(f"model.source={model}")
    if args.out:
        overrides.append(f"out_dir={_absolute(args.out)}")
    if args.launcher:
        overrides.append(f"launch.launcher={args.launcher}")
    if args.num_workers:
        overrides.append(f"launch.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("launch.use_gpu=true")
    if args.resume:
        overrides.append("train.resume=true")
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    config = load_config(args.config, overrides)
    # Resolve what the config file gave relative to the current directory, for every process and worker.
    data = config.data.model_copy(update={"paths": [_absolute(p) for p in config.data.paths],
                                          "val_paths": [_absolute(p) for p in config.data.val_paths]})
    source = config.model.source
    if source and Path(source).exists():
        source = _absolute(source)
    model = config.model.model_copy(update={"source": source})
    if data.recipe.path != BUNDLED:
        data = data.model_copy(update={"recipe": data.recipe.model_copy(update={"path": _absolute(data.recipe.path)})})
    return config.model_copy(update={"out_dir": _absolute(config.out_dir), "data": data, "model": model})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.stop_after is not None and args.stop_after <= 0:
        raise UserError("--stop-after must be a positive number of steps")
    config = build_config(args)
    if config.launch.launcher == "ray":
        from finetune.launch_ray import launch_ray

        summary = launch_ray(config, stop_after=args.stop_after)
    else:
        from finetune.train import train

        summary = train(config, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:
        from rich.console import Console

        from finetune.train import summary_table

        Console(stderr=True).print(summary_table(summary))
    return 0
