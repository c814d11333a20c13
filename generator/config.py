"""The pipeline's configuration: a YAML file validated by pydantic, overridable from the command line.

    run: demo
    db: sqlite:///selfinstruct.db
    seed: 0
    problems:  {target: 1000, per_call: 50, max_calls: 100, temperature: 0.8, top_p: 0.95,
                backend: {kind: openai, base_url: "http://127.0.0.1:8000/v1", model: llama-2-70b-chat}}
    tests:     {count: 5, temperature: 0.2, backend: {kind: vllm, model: /ckpt/codellama-7b-instruct}}
    solutions: {n: 10, temperature: 0.8, top_p: 0.95, backend: {kind: torch, checkpoint: /ckpt/tiny}}
    sandbox:   {workers: 2, timeout_s: 10, memory_mb: 512}
    selection: first

Defaults follow the Code Llama recipe (50 questions a call, 5 tests, 10 solutions, first passing
solution). Unknown keys are errors. `--set problems.target=10` overrides one key (the value is read as
YAML, so numbers, booleans and lists work). `fingerprint()` hashes what decides the data, not how fast it
is made (batch sizes, worker counts, Ray), so a resumed run may change those but not the recipe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from executor.config import SandboxConfig
from generator.backends.config import BackendConfig
from selfinstruct.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginBackendConfig(_Section):
    """A backend built by your own code: `factory` is "module:callable", called with `options` as keywords.

    For backends this package does not ship (and for tests, which plug in a scripted backend). Plugin
    backends run in the driver process, also when Ray is enabled.
    """

    kind: Literal["plugin"] = "plugin"
    factory: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="import path, e.g. mypkg.backends:make")
    options: dict[str, Any] = Field(default_factory=dict)


_BACKEND_KINDS = get_args(get_args(BackendConfig)[0])
# The backends package's union (openai | vllm | torch, and whatever it adds later) plus `plugin`.
StageBackend = Annotated[Union[(*_BACKEND_KINDS, PluginBackendConfig)], Field(discriminator="kind")]  # noqa: UP007


class _Stage(_Section):
    backend: StageBackend
    temperature: float = Field(ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: PositiveInt
    batch_size: PositiveInt = Field(default=64, description="requests handed to the backend at once")


class NearDupConfig(_Section):
    enabled: bool = False
    threshold: float = Field(default=0.7, gt=0.0, lt=1.0, description="estimated Jaccard similarity of word 3-grams")
    num_perm: PositiveInt = 128
    shingle: PositiveInt = 3


class DecontamConfig(_Section):
    humaneval: bool = True
    files: list[Path] = Field(default_factory=list, description="more benchmarks: JSONL with `text` (and `task_id`)")
    ngram: PositiveInt = 10

    @model_validator(mode="after")
    def _files_exist(self) -> DecontamConfig:
        for path in self.files:
            if not path.is_file():
                raise ValueError(f"benchmark file {str(path)!r} does not exist")
        return self


class ProblemsConfig(_Stage):
    target: PositiveInt = 1000
    per_call: PositiveInt = 50
    max_calls: PositiveInt = 100
    temperature: float = Field(default=0.8, ge=0.0)
    max_tokens: PositiveInt = 3072
    batch_size: PositiveInt = 8
    min_chars: PositiveInt = Field(default=12, description="shorter list items are not problems")
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)


class TestsConfig(_Stage):
    __test__ = False  # not a pytest test class

    count: PositiveInt = Field(default=5, description="tests asked for (the prompt's number)")
    temperature: float = Field(default=0.2, ge=0.0)
    max_tokens: PositiveInt = 512


class SolutionsConfig(_Stage):
    n: PositiveInt = 10
    temperature: float = Field(default=0.8, ge=0.0)
    max_tokens: PositiveInt = 1024
    batch_size: PositiveInt = 16


class ExecutionConfig(_Section):
    batch_size: PositiveInt = Field(default=256, description="solutions per sandbox call")
    imports: str = Field(default="from typing import *", description="run before every solution")


class RayConfig(_Section):
    enabled: bool = True
    address: str | None = Field(default=None, description="None: RAY_ADDRESS, a running cluster, or a local Ray")
    llm_replicas: PositiveInt | None = Field(default=None, description="actors per LLM stage; None: the backend's own")


class PipelineConfig(_Section):
    run: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\-]+$")
    db: str = "sqlite:///selfinstruct.db"
    seed: int = 0
    problems: ProblemsConfig
    tests: TestsConfig
    solutions: SolutionsConfig
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    selection: Literal["first", "random"] = "first"
    ray: RayConfig = Field(default_factory=RayConfig)

    def fingerprint(self) -> str:
        """sha256 over the recipe: everything that decides which data comes out."""
        data = self.model_dump(mode="json")
        data.pop("db")
        data.pop("ray")
        data["execution"].pop("batch_size")
        sandbox = data.pop("sandbox")
        data["sandbox"] = {k: sandbox[k] for k in ("timeout_s", "memory_mb", "output_limit_bytes", "image")}
        for stage in ("problems", "tests", "solutions"):
            data[stage].pop("batch_size")
            backend = data[stage]["backend"]
            data[stage]["backend"] = {k: backend.get(k) for k in ("kind", "model", "checkpoint", "factory", "options")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Loading, overrides, and error messages that name the key and the value.


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: {key!r} is {child!r}, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (values parsed as YAML) to the raw configuration."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise UserError(f"--set expects KEY.PATH=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return data


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"] if not (isinstance(part, str) and part in _UNION_TAGS))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    if error["type"] == "union_tag_invalid":
        context = error.get("ctx", {})
        return f"{where}.kind: {context.get('tag')!r} is not one of {context.get('expected_tags')}"
    value = error.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: {message} (got {shown})"


_UNION_TAGS = {cls.model_fields["kind"].default for cls in (*_BACKEND_KINDS, PluginBackendConfig)}


def validate_config(data: Any, source: str = "configuration") -> PipelineConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = _describe(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"invalid {source}: {first}{more}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a configuration file; every problem is one `UserError` line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r}: expected a mapping of keys, got {type(data).__name__}")
    return validate_config(apply_overrides(data, overrides or []), source=f"config {str(path)!r}")
