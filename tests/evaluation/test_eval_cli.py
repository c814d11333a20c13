"""`selfinstruct eval` end to end: MBPP from a file in the public dataset's fields, a tiny model on the
held-out corpus and HumanEval, the Table 8 comparison, the prompt formats, and one-line errors."""

from __future__ import annotations

import json

import pytest

from evaluation.benchmarks import load_benchmark
from evaluation.cli import main
from evaluation.prompts import BASE_STOP, MBPP_INSTRUCT_PROMPT, extract, prompt_for

# Three problems written for this test in MBPP's fields (task_id, text, code, test_list, test_setup_code).
MBPP_ROWS = [
    {"task_id": 901, "text": "Write a function to find the largest of three numbers.",
     "code": "def largest_of_three(a, b, c):\n    return max(a, b, c)",
     "test_list": ["assert largest_of_three(1, 2, 3) == 3", "assert largest_of_three(9, 2, 3) == 9",
                   "assert largest_of_three(1, 7, 3) == 7"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 902, "text": "Write a python function to count vowels in a string.",
     "code": "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)",
     "test_list": ["assert count_vowels('hello') == 2", "assert count_vowels('') == 0",
                   "assert count_vowels('AEIOU') == 5"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 903, "text": "Write a function that doubles the module-level constant and adds x.",
     "code": "def add_double(x):\n    return x + 2 * BASE",
     "test_list": ["assert add_double(1) == 21", "assert add_double(0) == 20"],
     "test_setup_code": "BASE = 10", "challenge_test_list": []},
]


@pytest.fixture
def mbpp_file(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return path


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prompt_formats_and_extraction(mbpp_file):
    mbpp = load_benchmark(f"mbpp:{mbpp_file}")
    task = mbpp.tasks["mbpp/901"]
    prompt = prompt_for(task, "mbpp", "instruct")
    assert prompt.startswith("<s>[INST] Your task is to write a Python function")
    assert "Problem: Write a function to find the largest" in prompt
    assert "Test: assert largest_of_three(1, 2, 3) == 3" in prompt and prompt.endswith("[/INST]")
    assert MBPP_INSTRUCT_PROMPT.splitlines()[1] in prompt
    # instruct: the solutions stage's parser; unclosed [PYTHON] is normal (the server strips the stop string)
    got = extract(task, " [PYTHON]\ndef largest_of_three(a, b, c):\n    return max(a, b, c)\n", "stop", "instruct")
    assert got.completion == "def largest_of_three(a, b, c):\n    return max(a, b, c)\n"
    assert extract(task, " [PYTHON]\ndef f(:\n", "stop", "instruct").failure.startswith("syntax_error")
    assert extract(task, "def f(): pass", "stop", "instruct").failure.startswith("missing_tag")
    # base on HumanEval: the prompt continued, cut at the Codex stop sequences
    he = load_benchmark("humaneval").tasks["HumanEval/0"]
    assert prompt_for(he, "humaneval", "base") == he.base_prompt == he.prefix
    body = "    return True\n\ndef other():\n    pass\n"
    assert extract(he, body, "stop", "base").completion == "    return True\n"
    assert "\ndef" in BASE_STOP


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_mbpp_reference_solutions_pass_and_samples_are_scored(mbpp_file, tmp_path, sandbox_ready, capsys):
    assert main(["--reference", "--benchmark", f"mbpp:{mbpp_file}", "--workers", "2", "--out",
                 str(tmp_path / "ref"), "--json"]) == 0
    line = _last_json(capsys)
    assert line["pass@1"] == 1.0 and line["problems"] == 3
    # a samples file with MBPP's bare numeric ids, one malformed line, two samples for 903
    samples = tmp_path / "s.jsonl"
    samples.write_text("\n".join([
        json.dumps({"task_id": 901, "completion": MBPP_ROWS[0]["code"]}),
        "{not json",
        json.dumps({"task_id": "mbpp/903", "completion": "def add_double(x):\n    return x"}),
        json.dumps({"task_id": 903, "completion": MBPP_ROWS[2]["code"]}),
        json.dumps({"task_id": 902}),
    ]) + "\n")
    assert main(["--samples", str(samples), "--benchmark", f"mbpp:{mbpp_file}", "--workers", "2",
                 "--out", str(tmp_path / "s"), "--json"]) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out.strip().splitlines()[-1])
    assert "2 malformed line(s) not scored (line 2: not JSON" in captured.err.replace("\n", " ")
    summary = line["benchmarks"]["mbpp"]
    assert summary["malformed_lines"] == 2 and line["samples"] == 3 and line["problems"] == 2
    assert line["pass@1"] == pytest.approx((1 + 0.5) / 2)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_tiny_model_before_and_after_then_compare(tmp_path, sandbox_ready, capsys):
    """A random tiny model writes no [PYTHON] block: every sample is a failure with its parse reason; the
    reference solutions stand in for a better model in the comparison."""
    common = ["--benchmark", "recipe-heldout", "--benchmark", "humaneval", "--limit", "3", "--workers", "2"]
    assert main(["--model", "tiny", *common, "--max-tokens", "8", "--n", "2", "--temperature", "0.8",
                 "--out", str(tmp_path / "before"), "--label", "tiny", "--json"]) == 0
    line = _last_json(capsys)
    assert line["benchmarks"]["humaneval"]["pass@1"] == 0.0 and line["benchmarks"]["humaneval"]["samples"] == 6
    rows = [json.loads(x) for x in (tmp_path / "before" / "recipe-heldout.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["outcome"] == "no_code" and r["error"] and "raw" in r for r in rows)
    assert main(["--reference", *common, "--out", str(tmp_path / "after"), "--label", "reference"]) == 0
    capsys.readouterr()
    assert main(["--compare", str(tmp_path / "before"), str(tmp_path / "after"), "--json"]) == 0
    captured = capsys.readouterr()
    table = json.loads(captured.out.strip().splitlines()[-1])
    assert table["header"] == ["model", "recipe-heldout pass@1", "humaneval pass@1"]
    assert table["rows"] == [["tiny", "0.0", "0.0"], ["reference", "100.0", "100.0"]]
    assert [(d["benchmark"], d["wins"], d["losses"]) for d in table["wins_losses"]] == [("recipe-heldout", 3, 0),
                                                                                        ("humaneval", 3, 0)]
    assert "reference vs tiny on humaneval: 3 won, 0 lost" in captured.err.replace("\n", " ")


@pytest.mark.parametrize("argv, message", [
    (["--samples", "{samples}", "--benchmark", "recipe-heldout"], "unknown task_id 'HumanEval/999'"),
    (["--reference", "--benchmark", "mbpp:{tmp}/missing.jsonl"], "MBPP file not found"),
    (["--samples", "{tmp}/missing.jsonl"], "samples file not found"),
    (["--model", "{tmp}/broken"], "cannot load the model"),
    (["--model", "no-such-preset"], "neither a checkpoint directory nor a preset"),
    (["--reference", "--benchmark", "nonsense"], "unknown benchmark 'nonsense'"),
    (["--compare", "{tmp}"], "no eval results"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{ not a config")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/999", "completion": "x"}) + "\n")
    argv = [a.format(samples=samples, tmp=tmp_path) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
