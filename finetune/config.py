"""The fine-tuning recipe's configuration: one pydantic model, read from YAML, overridable with `--set k=v`.

Defaults follow the papers (REFERENCE.md): AdamW betas (0.9, 0.95), weight decay 0.1 on matrices only,
gradient clipping 1.0, cosine schedule with warm-up down to peak/30, answer-only loss, rehearsal of 6% code
and 2% natural language, infilling applied with probability 0.9 (half PSM, half SPM). Everything a run
needs is here, so a run's fingerprint (`fingerprint()`) identifies it and is checked on resume.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfinstruct.errors import UserError

PAPER_ANSWER_FORMAT = "[PYTHON]\n{solution}\n[/PYTHON]"
BUNDLED = "bundled"  # a data path that means the file shipped with the project


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RehearsalSource(_Strict):
    """Extra pretraining-style text mixed into the instruct data; every token of it is trained."""

    name: str
    kind: Literal["code", "text"]
    path: str = BUNDLED  # a .jsonl file with a "text" field, a text file, a directory of files, or "bundled"
    proportion: float = Field(gt=0.0, lt=1.0)  # share of the trained tokens of an epoch


class InfillingConfig(_Strict):
    """Code Llama's fill-in-the-middle transform (paper section 2.3), applied to rehearsal code."""

    enabled: bool = False
    probability: float = Field(default=0.9, ge=0.0, le=1.0)
    spm_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # the rest is prefix-suffix-middle


class RecipeConfig(_Strict):
    """The bundled recipe corpus (generator/corpus.py) as training data; only its train split is ever used.

    `warmup` teaches the pipeline's three stage formats (finetune/recipe_warmup.py): a random or base model
    learns to write problem lists, `[TESTS]` blocks and `[PYTHON]` answers. `instruct` adds the train
    split as instruct examples (problem -> `[PYTHON]` solution), like exported triples, for runs where
    too few triples passed. The held-out split's stage documents are the validation set when no other is
    given, so the validation loss measures problems the model never trained on.
    """

    warmup: bool = False
    instruct: bool = False
    path: str = BUNDLED  # "bundled" (generator/data/recipe_corpus.jsonl) or a corpus JSONL of the same fields
    list_sizes: list[int] = Field(default=[10], min_length=1)  # questions per problem-list document
    list_rounds: int = Field(default=3, ge=0)  # how often each problem is a trained list item per epoch
    solution_variants: int = Field(default=2, ge=1)  # solution calls per problem, each showing another test
    max_problems: int | None = Field(default=None, ge=1)  # a seeded sample of the train split (a short warm-up)

    @field_validator("list_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("list sizes must be >= 1")
        return value


class DataConfig(_Strict):
    paths: list[str] = []  # export files (`selfinstruct export`), set by --data
    format: Literal["auto", "jsonl", "chat"] = "auto"
    answer_format: str = PAPER_ANSWER_FORMAT  # for jsonl rows; `{solution}` is replaced
    system: str | None = None  # an optional system message merged into every user turn
    seq_len: int | None = Field(default=None, gt=1)  # None: the model's max_seq_len
    packing: bool = True  # False: length-bucketed, padded batches
    share_prefixes: bool = False  # packing: write a common prompt prefix once per row (same loss, fewer tokens)
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)  # split from `paths` when `val_paths` is empty
    val_paths: list[str] = []  # a validation export (`selfinstruct export --split-val` writes NAME.val.jsonl)
    rehearsal: list[RehearsalSource] = [
        RehearsalSource(name="code", kind="code", proportion=0.06),
        RehearsalSource(name="natural_language", kind="text", proportion=0.02),
    ]
    infilling: InfillingConfig = InfillingConfig()
    recipe: RecipeConfig = RecipeConfig()

    @field_validator("answer_format")
    @classmethod
    def _has_solution(cls, value: str) -> str:
        if "{solution}" not in value:
            raise ValueError("answer_format must contain {solution}")
        return value

    @model_validator(mode="after")
    def _proportions(self) -> DataConfig:
        if sum(s.proportion for s in self.rehearsal) >= 1.0:
            raise ValueError("rehearsal proportions must add up to less than 1")
        return self


class ModelConfig(_Strict):
    source: str | None = None  # a checkpoint directory (Meta or HF layout) or a preset name (random init)
    rope_theta: float | None = None  # long-context fine-tuning: e.g. 1e6 (Code Llama)
    max_seq_len: int | None = None  # defaults to data.seq_len when that is longer than the model's
    activation_checkpointing: bool = False


class OptimConfig(_Strict):
    lr: float = Field(default=2e-5, gt=0.0)  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_steps: int | None = Field(default=None, ge=0)  # None: 5% of train.max_steps, at most 100
    final_lr_ratio: float = Field(default=1.0 / 30.0, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    max_steps: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=4, gt=0)  # sequences per micro-batch, per process
    grad_accum: int = Field(default=1, gt=0)
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    bf16: Literal["auto", "on", "off"] = "auto"  # autocast; auto means on for CUDA
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=200, ge=0)  # 0 disables periodic evaluation (the final one stays)
    eval_batches: int = Field(default=20, gt=0)
    checkpoint_every: int = Field(default=500, ge=0)  # 0: only the final checkpoint
    keep_checkpoints: int = Field(default=2, gt=0)
    progress: bool = True
    resume: bool = False  # continue from the latest checkpoint in out_dir


class LaunchConfig(_Strict):
    """How processes are started. "local" is one process, or every process of a `torchrun` launch (found
    from its environment); "ray" starts `num_workers` Ray Train workers running the same training code."""

    launcher: Literal["local", "ray"] = "local"
    num_workers: int = Field(default=2, gt=0)  # Ray Train workers
    use_gpu: bool = False  # Ray Train workers take one GPU each
    ray_address: str | None = None  # None: RAY_ADDRESS, a cluster on this machine, else a local Ray; "local"


class FinetuneConfig(_Strict):
    out_dir: str = "runs/finetune"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _warmup_fits(self) -> FinetuneConfig:
        if self.optim.warmup_steps is not None and self.optim.warmup_steps >= self.train.max_steps:
            raise ValueError(f"optim.warmup_steps ({self.optim.warmup_steps}) must be below train.max_steps "
                             f"({self.train.max_steps}), or the learning rate never reaches its peak")
        return self

    @property
    def warmup_steps(self) -> int:
        """Warm-up updates: as configured, else 5% of the run, at most 100 (Code Llama used 1000 of its long
        runs; a short fine-tune must still reach its peak learning rate)."""
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return min(100, max(1, self.train.max_steps // 20))

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not logging, launch or output place)."""
        values = self.model_dump(exclude={"out_dir": True, "launch": True,
                                          "train": {"progress", "log_every", "checkpoint_every", "keep_checkpoints",
                                                    "resume", "eval_every", "eval_batches"}})
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _parse_scalar(text: str) -> Any:
    """A `--set` value as YAML reads it (numbers, booleans, lists), so `lr=3e-4` is a float."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and text.strip() != value:
        return text
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `key=value` overrides (`optim.lr=3e-4`, `data.packing=false`) to a config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        node = values
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {part!r} is not a section")
        node[leaf] = _parse_scalar(raw)
    return values


def _one_line(exc: ValidationError, origin: str) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
    return f"invalid fine-tuning config ({origin}): {problems}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply `--set` overrides."""
    values: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping at the top level")
        values = loaded or {}
    values = apply_overrides(values, overrides or [])
    try:
        return FinetuneConfig.model_validate(values)
    except ValidationError as exc:
        raise UserError(_one_line(exc, origin)) from None


def config_from_dict(values: dict[str, Any]) -> FinetuneConfig:
    try:
        return FinetuneConfig.model_validate(values)
    except ValidationError as exc:
        raise UserError(_one_line(exc, "dict")) from None
