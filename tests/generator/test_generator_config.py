"""Configuration: defaults, overrides, fingerprint, and errors that name the bad key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from generator.config import load_config
from generator.seeds import derive_seed, shown_test_index
from selfinstruct.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """\
run: demo
db: sqlite:///selfinstruct.db
seed: 0
problems:  {target: 1000, per_call: 50, max_calls: 100, temperature: 0.8, top_p: 0.95,
            backend: {kind: openai, base_url: "http://127.0.0.1:8000/v1", model: llama-2-70b-chat}}
tests:     {count: 5, temperature: 0.2, backend: {kind: vllm, model: /ckpt/codellama-7b-instruct}}
solutions: {n: 10, temperature: 0.8, top_p: 0.95, backend: {kind: torch, checkpoint: /ckpt/tiny}}
sandbox:   {workers: 2, timeout_s: 10, memory_mb: 512}
selection: first
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(ISSUE_EXAMPLE)
    return path


def test_the_issue_example_loads_with_the_paper_defaults(config_file):
    cfg = load_config(config_file)
    assert (cfg.problems.per_call, cfg.tests.count, cfg.solutions.n, cfg.selection) == (50, 5, 10, "first")
    assert cfg.problems.backend.kind == "openai" and cfg.tests.backend.kind == "vllm"
    assert cfg.solutions.backend.kind == "torch" and cfg.solutions.top_p == 0.95
    assert cfg.problems.decontam.humaneval and not cfg.problems.near_dup.enabled
    assert cfg.ray.enabled  # the default for `selfinstruct generate`


def test_overrides_are_yaml_values_and_the_fingerprint_tracks_the_recipe_only(config_file):
    base = load_config(config_file)
    cfg = load_config(config_file, ["problems.target=10", "problems.near_dup.enabled=true", "run=other"])
    assert cfg.problems.target == 10 and cfg.problems.near_dup.enabled is True and cfg.run == "other"
    assert load_config(config_file, ["problems.target=10"]).fingerprint() != base.fingerprint()
    operational = ["sandbox.workers=7", "problems.batch_size=3", "ray.enabled=false", "db=sqlite:///elsewhere.db"]
    assert load_config(config_file, operational).fingerprint() == base.fingerprint()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "problems.target=lots",
            'problems.target: Input should be a valid integer, unable to parse string as an integer (got "lots")',
        ),
        ("problems.tagret=5", "unknown key 'problems.tagret'"),
        ("tests.backend.kind=gpt", "tests.backend.kind: 'gpt' is not one of 'openai', 'vllm', 'torch', 'plugin'"),
        ("tests.backend.modle=x", "unknown key 'tests.backend.modle'"),
        ("solutions.top_p=1.5", "solutions.top_p: Input should be less than or equal to 1 (got 1.5)"),
        ("selection=best", "selection: Input should be 'first' or 'random' (got \"best\")"),
        ("execution.batch_size=0", "execution.batch_size: Input should be greater than 0 (got 0)"),
        ("sandbox.cpus=~", "sandbox.cpus: Input should be a valid number (got null)"),
        ("problems.near_dup.threshold=1", "problems.near_dup.threshold: Input should be less than 1 (got 1)"),
    ],
)
def test_invalid_values_name_the_key_and_the_value(config_file, override, message):
    with pytest.raises(UserError) as error:
        load_config(config_file, [override])
    assert str(error.value) == f"invalid config '{config_file}': {message}"


def test_missing_sections_files_and_malformed_overrides(tmp_path, config_file):
    (tmp_path / "bad.yaml").write_text("run: x\nproblems: [1, 2\n")
    (tmp_path / "partial.yaml").write_text("run: x\n")
    cases = {
        (str(tmp_path / "nope.yaml"), ()): "does not exist",
        (str(tmp_path / "bad.yaml"), ()): "is not valid YAML at line 3",
        (str(tmp_path / "partial.yaml"), ()): "missing key 'problems' (and 2 more)",
        (str(config_file), ("problems.target",)): "--set expects KEY.PATH=VALUE, got 'problems.target'",
        (str(config_file), ("run.name=x",)): "--set run.name: 'run' is 'demo', not a section",
    }
    for (path, overrides), fragment in cases.items():
        with pytest.raises(UserError) as error:
            load_config(path, list(overrides))
        assert fragment in str(error.value)


@pytest.mark.timeout(60)
def test_the_command_line_prints_one_line_and_exits_2(config_file):
    result = subprocess.run(
        [sys.executable, "-m", "selfinstruct", "generate", "--config", str(config_file), "--set", "problems.target=-3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: invalid config '{config_file}': problems.target: Input should be greater than 0 (got -3)"
    ]


def test_seeds_are_stable_and_depend_on_identity_only():
    assert derive_seed(0, "tests", "abc") == derive_seed(0, "tests", "abc")
    assert (
        len(
            {
                derive_seed(0, "tests", "abc"),
                derive_seed(1, "tests", "abc"),
                derive_seed(0, "solutions", "abc"),
                derive_seed(0, "tests", "abd"),
            }
        )
        == 4
    )
    assert 0 <= derive_seed(2**40, "problems", 17) < 2**31
    picks = [shown_test_index(0, f"problem-{i}", 5) for i in range(200)]
    assert set(picks) == {0, 1, 2, 3, 4}  # every test gets shown for some problem
    assert picks == [shown_test_index(0, f"problem-{i}", 5) for i in range(200)]


@pytest.mark.parametrize("path", sorted((ROOT / "generator" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.solutions.n == 10 and cfg.tests.count == 5
    if path.name == "quickstart.yaml":
        # the demo model asks for lists of the size its recipe warm-up taught it
        warmup = yaml.safe_load((ROOT / "finetune" / "configs" / "recipe-warmup-demo.yaml").read_text())
        assert [cfg.problems.per_call] == warmup["data"]["recipe"]["list_sizes"]
    else:
        assert cfg.problems.per_call == 50  # the paper's
