"""Graded selection on a real scripted run (scripted LLM answers, the real Docker sandbox, a SQLite file).

The per-test outcomes of every sample follow from tests/generator/scripted_backend.py's catalog (the
run's tests: add_numbers 4 asserts, reverse_words / sum_of_squares / count_vowels 3 each):

    add_numbers     s0 a-b 1/4, s1 module-level sys.exit 0/4 (error), s2 a+b 4/4, s3 b+a 4/4, s4..s9 wrong 0/4
    reverse_words   s0 always-equal 0/3, s1 os._exit 0/3 (error), s2/s3 unparsed, s4 SystemExit 0/3,
                    s5 correct 3/3, s6..s9 wrong 0/3
    sum_of_squares  s0 overfit to the shown test 1/3, s1 endless loop 0/3 (timeout), s2 correct 3/3,
                    s3..s9 wrong 0/3
    count_vowels    s0 len(text) 1/3, s1 misses upper case 2/3, s2..s9 wrong 0/3
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.export import main as export_main
from db.selection import SelectionSpec, choose, iter_problems, normalize_code
from db.selection import main as select_main
from tests.generator.pipeline_helpers import config_dict, table_counts

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

NAMES = {"add_numbers": "add", "reverse_words": "reverse", "sum_of_squares": "squares", "count_vowels": "vowels"}

EXPECTED = {
    ("first", None): {"add": [2], "reverse": [5], "squares": [2]},
    ("best", None): {"add": [2], "reverse": [5], "squares": [2], "vowels": [1]},
    ("all_passing", None): {"add": [2, 3], "reverse": [5], "squares": [2]},
    ("threshold", 0.5): {"add": [2, 3], "reverse": [5], "squares": [2], "vowels": [1]},
    ("threshold", 0.25): {"add": [0, 2, 3], "reverse": [5], "squares": [0, 2], "vowels": [0, 1]},
    # 0.0 keeps every executed sample, one per distinct code: the six identical wrong ones count once
    ("threshold", 0.0): {"add": [0, 1, 2, 3, 4], "reverse": [0, 1, 4, 5, 6], "squares": [0, 1, 2, 3],
                         "vowels": [0, 1, 2]},
}


def _name(text: str) -> str:
    return next((short for fn, short in NAMES.items() if fn in text), text[:20])


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory: pytest.TempPathFactory, docker_client) -> str:
    from generator.config import validate_config
    from generator.pipeline import Pipeline

    db_path = tmp_path_factory.mktemp("graded") / "run.db"
    cfg = validate_config(config_dict(db_path))
    Pipeline(cfg, progress=False).run()
    return cfg.db


def _texts(db: str) -> dict[int, str]:
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        out = {pid: _name(text) for pid, text in conn.execute(sa.text("SELECT id, text FROM problems"))}
    engine.dispose()
    return out


@pytest.mark.parametrize(("rule", "threshold"), list(EXPECTED))
def test_each_rule_keeps_exactly_the_expected_samples(scripted_run: str, rule: str, threshold: float | None) -> None:
    engine = sa.create_engine(scripted_run)
    spec = SelectionSpec.make(rule, threshold)
    kept: dict[str, list[int]] = {}
    with engine.connect() as conn:
        names = _texts(scripted_run)
        for problem in iter_problems(conn, None):
            if chosen := choose(spec, problem):
                kept[names[problem.problem_id]] = [s.sample_index for s in chosen]
    engine.dispose()
    assert kept == EXPECTED[(rule, threshold)]


def test_changing_the_rule_changes_the_export_and_executes_nothing(scripted_run: str, tmp_path: Path, capsys) -> None:
    before = table_counts(scripted_run)
    rows = {}
    for rule in ("", "first", "best", "all_passing"):
        out = tmp_path / f"{rule or 'triples'}.jsonl"
        args = ["--db", scripted_run, "--run", "e2e", "--out", str(out), "--workers", "1"]
        assert export_main(args + (["--rule", rule] if rule else [])) == 0
        rows[rule] = [json.loads(line) for line in out.read_text().splitlines()]
    out = tmp_path / "t.jsonl"
    assert export_main(["--db", scripted_run, "--run", "e2e", "--out", str(out), "--rule", "threshold",
                        "--threshold", "0.25"]) == 0
    rows["threshold"] = [json.loads(line) for line in out.read_text().splitlines()]
    assert table_counts(scripted_run) == before  # no execution, no triple written

    def picked(rs):
        return sorted((_name(r["problem"]), r["provenance"]["sample_index"]) for r in rs)

    assert picked(rows[""]) == picked(rows["first"]) == [("add", 2), ("reverse", 5), ("squares", 2)]
    assert [r["id"] for r in rows[""]] == [r["id"] for r in rows["first"]]
    assert picked(rows["best"]) == [("add", 2), ("reverse", 5), ("squares", 2), ("vowels", 1)]
    assert picked(rows["all_passing"]) == [("add", 2), ("add", 3), ("reverse", 5), ("squares", 2)]
    expected_t = sorted((p, i) for p, idx in EXPECTED[("threshold", 0.25)].items() for i in idx)
    assert picked(rows["threshold"]) == expected_t
    # every row: per-test outcomes, pass fraction, samples drawn and passed, the rule and its threshold
    vowels = next(r for r in rows["best"] if _name(r["problem"]) == "vowels")["provenance"]
    assert vowels["test_outcomes"] == [True, True, False] and vowels["pass_fraction"] == 0.6667
    assert (vowels["samples_drawn"], vowels["samples_passed"], vowels["selection_rule"]) == (10, 0, "best")
    add0 = next(r for r in rows["threshold"] if r["provenance"]["sample_index"] == 0 and _name(r["problem"]) == "add")
    assert add0["provenance"]["test_outcomes"] == [False, False, True, False]
    assert add0["provenance"]["pass_fraction"] == 0.25 and add0["provenance"]["selection_threshold"] == 0.25
    assert add0["provenance"]["samples_drawn"] == 10 and add0["provenance"]["samples_passed"] == 2
    for r in rows[""]:
        assert r["provenance"]["test_outcomes"] == [True] * r["provenance"]["tests_total"]
        assert r["provenance"]["selection_threshold"] is None

    # `selfinstruct select` applies a rule after the run and writes what it keeps
    kept = tmp_path / "kept.jsonl"
    assert select_main(["--db", scripted_run, "--run", "e2e", "--rule", "all_passing", "--out", str(kept)]) == 0
    assert "keeps 4 (problem, solution) pairs of 3 problems" in capsys.readouterr().out
    assert [json.loads(line)["sample_index"] for line in kept.read_text().splitlines()] == [2, 3, 5, 2]
    assert table_counts(scripted_run) == before


def test_preference_pairs(scripted_run: str, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    assert export_main(["--db", scripted_run, "--format", "preference", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = sorted((_name(r["problem"]), r["chosen_sample_index"], r["rejected_sample_index"]) for r in rows)
    # chosen: fully passing, deduped; rejected: at most half the tests, deduped; grid diagonals, 3 a problem
    assert pairs == [("add", 2, 0), ("add", 2, 1), ("add", 3, 0),
                     ("reverse", 5, 0), ("reverse", 5, 1), ("reverse", 5, 4),
                     ("squares", 2, 0), ("squares", 2, 1), ("squares", 2, 3)]
    for r in rows:
        assert r["prompt"].startswith("<s>[INST] ") and r["prompt"].endswith(" [/INST]")
        assert r["chosen"].endswith(" </s>") and r["chosen_pass_fraction"] == 1.0
        assert r["rejected_pass_fraction"] <= 0.5 and (r["chosen_min"], r["rejected_max"]) == (1.0, 0.5)
        assert normalize_code(r["chosen_code"]) != normalize_code(r["rejected_code"])


def test_rl_parquet_round_trips_and_its_tests_pass_in_the_sandbox(scripted_run: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from executor.config import SandboxConfig
    from executor.jobs import Job
    from executor.sandbox import Sandbox

    out = tmp_path / "rl.parquet"
    assert export_main(["--db", scripted_run, "--format", "rl", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert set(table.column_names) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    rows = table.to_pylist()
    assert sorted(_name(r["prompt"][0]["content"]) for r in rows) == ["add", "reverse", "squares"]

    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.to_list() == rows

    for r in rows:
        assert r["prompt"][0]["role"] == "user" and r["reward_model"]["style"] == "rule"
        assert r["data_source"] == "selfinstruct" and r["extra_info"]["split"] == "train"
    box = rows[0]["extra_info"]["sandbox"]
    cfg = SandboxConfig(workers=1, timeout_s=box["timeout_s"], memory_mb=box["memory_mb"])
    jobs = [Job(id=str(i), solution=r["extra_info"]["reference_solution"],
                tests=json.loads(r["reward_model"]["ground_truth"]), imports=box["imports"])
            for i, r in enumerate(rows)]
    wrong = Job(id="wrong", solution="def add_numbers(a, b):\n    return 0\n",
                tests=jobs[0].tests if "add_numbers" in jobs[0].solution else jobs[1].tests)
    with Sandbox(cfg) as sandbox:
        results = {res.id: res for res in sandbox.run([*jobs, wrong])}
    assert all(results[j.id].outcome == "passed" for j in jobs)
    assert results["wrong"].outcome != "passed"  # the tests do reward: a wrong answer fails them


def test_stats_show_the_histogram_and_per_rule_counts(scripted_run: str, capsys) -> None:
    from db.cli import main as db_main

    assert db_main(["stats", "--db", scripted_run, "--json", "--threshold", "0.5"]) == 0
    sel = json.loads(capsys.readouterr().out)["selection"]
    assert sum(sel["pass_fraction_histogram"].values()) == 38
    assert sel["pass_fraction_histogram"]["1.0"] == 4
    assert sel["rules"]["first"] == {"problems": 3, "triples": 3}
    assert sel["rules"]["all_passing"] == {"problems": 3, "triples": 4}
    assert sel["rules"]["best"] == {"problems": 4, "triples": 4}
    assert sel["rules"]["threshold>=0.5"] == {"problems": 4, "triples": 5}
    assert db_main(["stats", "--db", scripted_run]) == 0
    text = capsys.readouterr().out
    assert "pass frac." in text and "all_passing 4 (3 problems)" in text


def test_bad_input_is_one_line(scripted_run: str, tmp_path: Path, capsys) -> None:
    from db.engine import make_engine
    from db.queries import start_run

    cases = [
        (["--rule", "majority"], "unknown selection rule 'majority'"),
        (["--rule", "threshold", "--threshold", "1.5"], "--threshold must be a fraction in [0, 1]"),
        (["--rule", "best", "--threshold", "0.5"], "--threshold applies to the threshold rule only"),
    ]
    for extra, message in cases:
        for main, args in ((select_main, []), (export_main, ["--out", str(tmp_path / "x.jsonl")])):
            assert main(["--db", scripted_run, "--run", "e2e", *args, *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x.jsonl").exists()
    assert export_main(["--db", scripted_run, "--format", "preference", "--rejected-max", "2",
                        "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "--rejected-max must be a fraction" in capsys.readouterr().err

    engine = make_engine(scripted_run)
    start_run(engine, "empty", {}, "f" * 64, "test")
    engine.dispose()
    for main, args in ((select_main, []), (export_main, ["--out", str(tmp_path / "e.jsonl"), "--rule", "best"]),
                       (export_main, ["--out", str(tmp_path / "e.parquet"), "--format", "rl"])):
        assert main(["--db", scripted_run, "--run", "empty", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert "run 'empty' has no executions yet" in err and "\n" not in err
