"""Completions from a model, through the same backends as generation (generator/backends/).

`--model DIR|PRESET` is the built-in torch backend on a checkpoint directory (a preset gets a random
checkpoint of that size, for smoke runs); `--backend YAML` is any configured backend, e.g.
`{kind: openai, base_url: http://127.0.0.1:8000/v1, model: codellama}` or `{kind: vllm, model: DIR}`.
Temperature 0 is greedy decoding (the paper's Table 8 setting); sample i of a problem gets seed
`seed + i` from the backend, so a rerun with the same seed draws the same samples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from evaluation.benchmarks import Benchmark
from evaluation.prompts import PromptFormat, extract, prompt_for, stop_for
from evaluation.samples import Sample
from generator.backends.base import Backend, BackendError, GenerationRequest
from generator.backends.config import BackendConfig, TorchBackendConfig
from selfinstruct.errors import UserError


class SamplingSettings(BaseModel):
    n: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    format: PromptFormat = "instruct"


def backend_config(model: str | None, backend: str | None, out_dir: Path, device: str = "cpu",
                   dtype: str = "float32", batch_size: int = 8) -> BackendConfig:
    if backend is not None:
        try:
            raw = yaml.safe_load(backend)
            return TypeAdapter(BackendConfig).validate_python(raw)
        except (yaml.YAMLError, ValidationError) as exc:
            first = str(exc).splitlines()[:3]
            raise UserError(f"--backend is not a backend configuration ({' '.join(first)})") from None
    assert model is not None
    path = Path(model)
    if not path.exists():
        from model.args import PRESETS

        if model.lower() not in PRESETS:
            raise UserError(f"--model {model!r} is neither a checkpoint directory nor a preset "
                            f"({', '.join(sorted(PRESETS))})")
        from model.init import init_checkpoint

        path = out_dir / "init" / model.lower()
        if not (path / "config.json").is_file():
            init_checkpoint(model.lower(), path, seed=0)
    return TorchBackendConfig(checkpoint=str(path), device=device, dtype=dtype, batch_size=batch_size)


def open_backend(cfg: BackendConfig) -> Backend:
    from generator.backends.factory import make_backend

    where = getattr(cfg, "checkpoint", None) or getattr(cfg, "model", None) or cfg.kind
    try:
        return make_backend(cfg)
    except UserError as exc:
        raise UserError(f"cannot load the model {where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a checkpoint that cannot be loaded is the user's to fix
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"cannot load the model {where}: {exc.__class__.__name__}: {first}") from None


def sample(backend: Backend, benchmark: Benchmark, settings: SamplingSettings, chunk: int = 8,
           on_samples: Callable[[int], None] | None = None) -> list[Sample]:
    """`settings.n` samples of every task, extracted as the solutions stage parses them."""
    tasks = list(benchmark.tasks.values())
    stop = stop_for(settings.format)
    samples: list[Sample] = []
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        requests = [
            GenerationRequest(prompt=prompt_for(t, benchmark.kind, settings.format), n=settings.n,
                              temperature=settings.temperature, top_p=settings.top_p,
                              max_tokens=settings.max_tokens, stop=stop,
                              seed=settings.seed if settings.temperature > 0 else None)
            for t in part
        ]
        try:
            outputs = backend.generate(requests)
        except BackendError as exc:
            raise UserError(f"the backend failed: {exc}") from None
        for task, completions in zip(part, outputs, strict=True):
            for index, c in enumerate(completions):
                got = extract(task, c.text, c.finish_reason, settings.format)
                samples.append(Sample(task_id=task.task_id, completion=got.completion, index=index,
                                      failure=got.failure,
                                      extra={"raw": c.text, "finish_reason": c.finish_reason,
                                             "completion_tokens": c.completion_tokens}))
            if on_samples:
                on_samples(len(completions))
    return samples
