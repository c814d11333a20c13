"""`selfinstruct finetune`: a real run from the command line, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetune.cli import main


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfinstruct", "finetune", *args], capture_output=True, text=True, check=False,
                          timeout=120, cwd=cwd)


@pytest.mark.timeout(150)
def test_cli_runs_a_config_file_with_overrides(tmp_path, tiny_checkpoint, export_file):
    (tmp_path / "ft.yaml").write_text(
        "data:\n  seq_len: 256\n  rehearsal: []\n  packing: false\n"
        "optim:\n  lr: 3.0e-3\n  warmup_steps: 1\n"
        "train:\n  max_steps: 50\n  batch_size: 2\n  log_every: 1\n  progress: false\n  device: cpu\n")
    proc = _run("--config", "ft.yaml", "--data", str(export_file), "--model", str(tiny_checkpoint), "--out", "out",
                "--set", "train.max_steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["out_dir"] == str(tmp_path / "out")
    assert "fine-tuning run" in proc.stderr
    assert (tmp_path / "out" / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lr=-1"], "invalid fine-tuning config (defaults): optim.lr: Input should be greater than 0"),
    (["--set", "nonsense"], "--set expects key=value"),
    (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["--max-steps", "50", "--set", "optim.warmup_steps=50"], "optim.warmup_steps (50) must be below train.max_steps"),
    (["--set", "data.rehearsal=[{name: c, kind: code, proportion: 0.7}, {name: t, kind: text, proportion: 0.4}]"],
     "rehearsal proportions must add up to less than 1"),
])
def test_bad_configuration_is_one_line(tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.timeout(60)
def test_bad_export_line_from_the_command_line(tmp_path, tiny_checkpoint):
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "problem": "p", "solution": "s"}\n{oops\n')
    proc = _run("--data", "bad.jsonl", "--model", str(tiny_checkpoint), "--out", "o", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'bad.jsonl'}:2: not valid JSON (Expecting property name " \
                                  "enclosed in double quotes)"


@pytest.mark.parametrize("name", ["instruct-7b.yaml", "long-context.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from finetune.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "finetune" / "configs" / name)
    assert config.optim.betas == (0.9, 0.95) and config.optim.final_lr_ratio == pytest.approx(1 / 30)
    if name == "long-context.yaml":
        assert config.model.rope_theta == 1e6 and config.data.seq_len == config.model.max_seq_len == 16384


@pytest.mark.timeout(150)
def test_validation_export_file_is_used_instead_of_a_split(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from tests.finetune.conftest import instruct_rows, write_jsonl

    monkeypatch.chdir(tmp_path)
    rows = instruct_rows(12)
    write_jsonl(tmp_path / "train.jsonl", rows[:10])
    write_jsonl(tmp_path / "train.val.jsonl", rows[10:])
    common = ["--data", "train.jsonl", "--model", str(tiny_checkpoint), "--max-steps", "2",
              "--set", "data.seq_len=256", "--set", "data.rehearsal=[]", "--set", "train.progress=false",
              "--set", "train.device=cpu", "--set", "train.batch_size=2"]
    assert main(common + ["--val-data", "train.val.jsonl", "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["train_examples"], summary["val_examples"]) == (10, 2) and summary["eval_loss"] > 0
    write_jsonl(tmp_path / "leak.jsonl", rows[9:])
    assert main(common + ["--val-data", "leak.jsonl", "--out", str(tmp_path / "b")]) == 2
    assert "duplicate example id 't9'" in capsys.readouterr().err


@pytest.mark.timeout(150)
def test_sequence_length_follows_the_model_unless_set(tmp_path, tiny_checkpoint, export_file, monkeypatch, capsys):
    """The README's CPU smoke command (`--model tiny`, or a directory of the tiny preset) sets no sequence
    length: the model's max_seq_len (512) is used; an explicit longer one is the usual one-line error."""
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(export_file), "--max-steps", "1", "--set", "train.progress=false",
              "--set", "train.device=cpu", "--set", "train.batch_size=2", "--set", "data.rehearsal=[]"]
    for source, out in (("tiny", "preset"), (str(tiny_checkpoint), "directory")):
        assert main(common + ["--model", source, "--out", str(tmp_path / out)]) == 0, capsys.readouterr().err
        assert json.loads((tmp_path / out / "summary.json").read_text())["steps"] == 1
    assert main(common + ["--model", "tiny", "--out", str(tmp_path / "long"), "--set", "data.seq_len=2048"]) == 2
    assert "data.seq_len=2048 is longer than the model's max_seq_len=512" in capsys.readouterr().err
