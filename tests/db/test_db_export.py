"""`selfinstruct export`: JSONL and Llama 2 chat rows, stable ids and split, filters, dedup, HF datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from db_workload import run_pipeline

from db import queries
from db.export import (
    ChatRow,
    ExportFilter,
    JsonlRow,
    answer_text,
    export,
    is_validation,
    iter_triples,
    main,
    row_id,
    val_path,
)
from db.models import Execution, Problem, Test, Triple
from db.records import tests_json as encode_tests
from model.chat import chat_text, prompt_answer_text


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def two_runs(engine: sa.Engine) -> sa.Engine:
    """Two runs of the same workload: the same problems twice (for cross-run dedup)."""
    run_pipeline(engine, "run-a")
    run_pipeline(engine, "run-b", rule="random")
    return engine


def test_jsonl_rows_carry_problem_tests_solution_and_provenance(
    two_runs: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "data.jsonl"
    stats = export(two_runs, out, fmt="jsonl", flt=ExportFilter(runs=["run-a"]))
    rows = read_jsonl(out)
    with two_runs.connect() as conn:
        n_triples = conn.scalar(
            sa.select(sa.func.count()).select_from(Triple).where(Triple.run_id == queries.get_run_id(two_runs, "run-a"))
        )
    assert stats.train == len(rows) == n_triples > 0
    for r in rows:
        JsonlRow.model_validate(r)  # every row has the documented schema
    row = rows[0]
    assert set(row) == {"id", "problem", "tests", "solution", "provenance"}
    assert row["problem"].startswith("Write a function f") and len(row["tests"]) == 3
    assert all(t.startswith("assert ") for t in row["tests"])
    prov = row["provenance"]
    assert prov["run"] == "run-a" and prov["selection_rule"] == "first"
    assert prov["shown_test"] in row["tests"]
    assert prov["image_digest"] == "sha256:test" and prov["tests_passed"] == prov["tests_total"] == 3
    assert prov["stages"]["problems"]["model"] == "big-llm"
    assert prov["stages"]["tests"]["model"] == prov["stages"]["solutions"]["model"] == "tiny-llm"
    assert prov["stages"]["solutions"]["params"]["temperature"] == 0.8 and prov["stages"]["solutions"]["seed"] == 1234
    # the exported solution passes its tests for real
    env: dict = {}
    exec(row["solution"], env)  # noqa: S102 - the workload's own code
    for t in row["tests"]:
        exec(t, env)  # noqa: S102
    # every exported problem is unique within a run and ids are stable across exports
    assert len({r["problem"] for r in rows}) == len(rows)
    export(two_runs, tmp_path / "again.jsonl", fmt="jsonl", flt=ExportFilter(runs=["run-a"]))
    assert [r["id"] for r in read_jsonl(tmp_path / "again.jsonl")] == [r["id"] for r in rows]
    assert rows[0]["id"] == row_id("run-a", _norm_hash(two_runs, row["problem"]), row["solution"])


def _norm_hash(engine: sa.Engine, text: str) -> str:
    with engine.connect() as conn:
        return conn.scalar(sa.select(Problem.norm_hash).where(Problem.text == text).limit(1))


def test_chat_rows_are_exact_llama2_chat(two_runs: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "chat.jsonl"
    export(two_runs, out, fmt="chat", flt=ExportFilter(runs=["run-a"]))
    rows = read_jsonl(out)
    assert rows
    for row in rows:
        ChatRow.model_validate(row)
        assert set(row) == set(ChatRow.model_fields)
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"].startswith("[PYTHON]\n") and assistant["content"].endswith("\n[/PYTHON]")
        assert row["text"] == f"<s>[INST] {user['content'].strip()} [/INST] {assistant['content'].strip()} </s>"
        assert row["text"] == chat_text(row["messages"])
        assert (row["prompt"], row["answer"]) == prompt_answer_text(user["content"], assistant["content"])
        assert row["prompt"] + row["answer"] == row["text"]
    export(two_runs, tmp_path / "plain.jsonl", fmt="chat", flt=ExportFilter(runs=["run-a"]), answer_format="plain")
    plain = read_jsonl(tmp_path / "plain.jsonl")[0]
    assert "[PYTHON]" not in plain["text"] and plain["messages"][1]["content"].startswith("def f")
    assert answer_text("def f():\n    pass\n") == "[PYTHON]\ndef f():\n    pass\n[/PYTHON]"
    assert answer_text("def f():\n    pass\n", "plain") == "def f():\n    pass"


def test_split_is_stable_and_roughly_the_fraction() -> None:
    ids = [row_id("r", str(i), "s") for i in range(20_000)]
    val = [i for i in ids if is_validation(i, 0.05)]
    assert 0.04 < len(val) / len(ids) < 0.06
    assert val == [i for i in ids if is_validation(i, 0.05)]
    assert set(val) <= {i for i in ids if is_validation(i, 0.10)}  # growing the fraction only moves rows to val
    assert not any(is_validation(i, 0.0) for i in ids[:100])
    assert val_path(Path("d/x.jsonl")) == Path("d/x.val.jsonl") and val_path(Path("d/x")) == Path("d/x.val")


def test_split_files_dedup_and_filters(two_runs: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    stats = export(two_runs, out, fmt="jsonl", split_val=0.3)
    train, val = read_jsonl(out), read_jsonl(tmp_path / "all.val.jsonl")
    assert stats.train == len(train) and stats.validation == len(val) and len(val) > 0 and len(train) > 0
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert all(is_validation(r["id"], 0.3) for r in val) and not any(is_validation(r["id"], 0.3) for r in train)
    everything = train + val
    assert {r["provenance"]["run"] for r in everything} == {"run-a", "run-b"}
    # the two runs asked the same questions: --dedup keeps one row per problem, the earliest (run-a)
    export(two_runs, tmp_path / "dedup.jsonl", fmt="jsonl", flt=ExportFilter(dedup=True))
    dedup = read_jsonl(tmp_path / "dedup.jsonl")
    assert len(dedup) == len({r["problem"] for r in everything}) < len(everything)
    assert {r["provenance"]["run"] for r in dedup} == {"run-a"}
    # --min-tests-passed: the workload's problems have 3 tests each; make one execution look like 2
    with two_runs.begin() as conn:
        sid = conn.scalar(sa.select(Triple.solution_id).order_by(Triple.id).limit(1))
        conn.execute(sa.update(Execution).where(Execution.solution_id == sid).values(tests_passed=2))
    stats3 = export(two_runs, tmp_path / "min3.jsonl", flt=ExportFilter(min_tests_passed=3))
    assert stats3.train == len(everything) - 1
    # with the earliest run-a row filtered out, dedup falls back to run-b's copy of that problem
    export(two_runs, tmp_path / "dedup3.jsonl", flt=ExportFilter(min_tests_passed=3, dedup=True))
    dedup3 = read_jsonl(tmp_path / "dedup3.jsonl")
    assert len(dedup3) == len(dedup) and {r["provenance"]["run"] for r in dedup3} == {"run-a", "run-b"}


def test_pages_stream_every_row_once(two_runs: sa.Engine) -> None:
    all_rows = list(iter_triples(two_runs, ExportFilter()))
    paged = list(iter_triples(two_runs, ExportFilter(), page_rows=3))
    assert [(x.run, x.problem_id) for x in paged] == [(x.run, x.problem_id) for x in all_rows]
    assert len({(x.run, x.problem_id) for x in paged}) == len(paged)


def test_output_loads_with_hf_datasets(two_runs: sa.Engine, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    for fmt in ("jsonl", "chat"):
        out = tmp_path / f"{fmt}.jsonl"
        stats = export(two_runs, out, fmt=fmt, split_val=0.2)  # type: ignore[arg-type]
        ds = datasets.load_dataset(
            "json",
            data_files={"train": str(out), "validation": str(val_path(out))},
            cache_dir=str(tmp_path / "hf-cache"),
        )
        assert ds["train"].num_rows == stats.train and ds["validation"].num_rows == stats.validation
        if fmt == "chat":
            assert ds["train"][0]["messages"][0]["role"] == "user" and ds["train"][0]["text"].startswith("<s>[INST] ")
        else:
            assert isinstance(ds["train"][0]["tests"], list) and "provenance" in ds["train"].column_names


def test_control_tags_in_a_problem_are_skipped_in_chat(engine: sa.Engine, tmp_path: Path) -> None:
    run_pipeline(engine, "run-a")
    with engine.begin() as conn:
        pid = conn.scalar(sa.select(Triple.problem_id).order_by(Triple.id).limit(1))
        conn.execute(sa.update(Problem).where(Problem.id == pid).values(text="Ignore this [/INST] and that"))
    stats = export(engine, tmp_path / "c.jsonl", fmt="chat")
    assert stats.skipped_chat_format == 1
    assert all("[/INST] and" not in r["text"] for r in read_jsonl(tmp_path / "c.jsonl"))


def test_cli_export_and_its_errors(
    two_runs: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli" / "chat.jsonl"
    rc = main(
        ["--db", db_url, "--run", "run-b", "--format", "chat", "--out", str(out), "--split-val", "0.1", "--dedup"]
    )
    assert rc == 0
    msg = capsys.readouterr().out
    assert "training rows to" in msg and "validation rows to" in msg
    assert out.exists() and val_path(out).exists()
    assert main(["--db", db_url, "--run", "nope", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run named 'nope'") and "\n" not in err
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["--db", db_url, "--out", str(tmp_path / "y.jsonl"), "--split-val", "1.5"]) == 2
    assert "--split-val" in capsys.readouterr().err
    assert not list(tmp_path.glob(".y.jsonl*"))  # no temporary files left behind


def test_since_filters_by_selection_time(two_runs: sa.Engine, tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    now = datetime.now()
    everything = export(two_runs, tmp_path / "all.jsonl").rows
    assert everything > 0
    assert export(two_runs, tmp_path / "past.jsonl", flt=ExportFilter(since=now - timedelta(days=1))).rows == everything
    assert export(two_runs, tmp_path / "future.jsonl", flt=ExportFilter(since=now + timedelta(days=1))).rows == 0


def test_export_without_split_removes_a_stale_validation_file(two_runs: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    export(two_runs, out, split_val=0.3)
    assert val_path(out).exists()
    stats = export(two_runs, out)
    assert not val_path(out).exists() and stats.removed_stale_validation == str(val_path(out))
    assert len(read_jsonl(out)) == stats.train == stats.rows


# Every character class JSON escaping treats differently: quotes, backslash, the short escapes, other
# control characters, DEL, non-ASCII (2-, 3- and 4-byte UTF-8), the line separators JavaScript cares about.
TRICKY = 'say "hi" \\ back\tslash\nnew\rline\x01\x07\x1f\x7f é ü 中文 \u2028\u2029 \U0001f600 </script>'


def _reference_lines(
    engine: sa.Engine, fmt: str, split_val: float, answer_format: str = "python-tags"
) -> tuple[bytes, bytes]:
    """The export as the readable path defines it: one Triplet, one row dict, one to_json per row."""
    from pydantic_core import to_json

    from db.export import chat_row, jsonl_row
    from model.chat import ChatFormatError

    train, val = [], []
    for x in iter_triples(engine, ExportFilter()):
        try:
            row = chat_row(x, answer_format) if fmt == "chat" else jsonl_row(x)  # type: ignore[arg-type]
        except ChatFormatError:
            continue
        (val if is_validation(row["id"], split_val) else train).append(to_json(row) + b"\n")
    return b"".join(train), b"".join(val)


def test_export_bytes_equal_the_reference_rows(two_runs: sa.Engine, tmp_path: Path) -> None:
    """The export writes JSON text straight from page rows; it must be byte for byte what serializing
    each JsonlRow / ChatRow dict gives, tricky strings, missing calls, null seeds and digests included."""
    from db.models import LLMCall, Solution

    with two_runs.begin() as conn:
        triples = conn.execute(sa.select(Triple.problem_id, Triple.solution_id).order_by(Triple.id).limit(4)).all()
        (p0, s0), (p1, s1), (_, s2), (p3, _) = triples
        conn.execute(sa.update(Problem).where(Problem.id == p0).values(text=f"  {TRICKY}\n"))
        conn.execute(sa.update(Solution).where(Solution.id == s0).values(code=f"def f(x):\n    return {TRICKY!r}\n"))
        conn.execute(sa.update(Solution).where(Solution.id == s1).values(call_id=None, shown_test_id=None))
        conn.execute(sa.update(Problem).where(Problem.id == p1).values(call_id=None, tests_call_id=None))
        conn.execute(sa.update(Execution).where(Execution.solution_id == s2).values(image_digest=None))
        call = conn.scalar(sa.select(Solution.call_id).where(Solution.id == s2))
        conn.execute(
            sa.update(LLMCall).where(LLMCall.id == call).values(seed=None, params={"t": 1e-5, "x": [1.5, "é"]})
        )
        conn.execute(sa.update(Problem).where(Problem.id == p3).values(text="no [INST] tags allowed"))
        # a tricky test, with problems.tests_json rewritten the way record_tests writes it ...
        conn.execute(sa.update(Test).where(Test.problem_id == p0, Test.index == 0).values(code=f"assert f() == {TRICKY!r}"))
        codes = conn.scalars(sa.select(Test.code).where(Test.problem_id == p0).order_by(Test.index)).all()
        conn.execute(sa.update(Problem).where(Problem.id == p0).values(tests_json=encode_tests(codes)))
        # ... and a problem without tests_json (written before migration 0006): read from the tests table
        conn.execute(sa.update(Problem).where(Problem.id == p1).values(tests_json=None))
    for fmt, answer_format in (("jsonl", "python-tags"), ("chat", "python-tags"), ("chat", "plain")):
        out = tmp_path / f"{fmt}-{answer_format}.jsonl"
        stats = export(two_runs, out, fmt=fmt, split_val=0.3, answer_format=answer_format)  # type: ignore[arg-type]
        train, val = _reference_lines(two_runs, fmt, 0.3, answer_format)
        assert out.read_bytes() == train and val_path(out).read_bytes() == val
        assert stats.train == train.count(b"\n") and stats.validation == val.count(b"\n") > 0
        assert stats.skipped_chat_format == (1 if fmt == "chat" else 0)
    # split on "\n" only: U+2028 is a line break to str.splitlines, and JSON leaves it unescaped
    jsonl = tmp_path / "jsonl-python-tags.jsonl"
    lines = [*jsonl.read_bytes().split(b"\n"), *val_path(jsonl).read_bytes().split(b"\n")]
    rows = [json.loads(line) for line in lines if line]
    assert any(r["problem"] == f"  {TRICKY}\n" for r in rows)
    assert any(r["provenance"]["stages"]["solutions"] == {"model": None, "params": None, "seed": None} for r in rows)


def test_windows_skip_filtered_rows_and_keep_order(two_runs: sa.Engine) -> None:
    """Pages are windows of triple ids: a window whose rows all fail a filter yields nothing, the next
    ones go on, and the rows come out in triple id order exactly once."""
    everything = [x.solution_id for x in iter_triples(two_runs, ExportFilter())]
    b_only = [x.solution_id for x in iter_triples(two_runs, ExportFilter(runs=["run-b"]), page_rows=2)]
    with two_runs.connect() as conn:
        expected = conn.scalars(
            sa.select(Triple.solution_id)
            .where(Triple.run_id == queries.get_run_id(two_runs, "run-b"))
            .order_by(Triple.id)
        ).all()
    assert b_only == list(expected) and set(b_only) < set(everything)
    with two_runs.begin() as conn:  # fail every execution of the first three triples
        first = conn.scalars(sa.select(Triple.solution_id).order_by(Triple.id).limit(3)).all()
        conn.execute(sa.update(Execution).where(Execution.solution_id.in_(first)).values(outcome="failed"))
    assert [x.solution_id for x in iter_triples(two_runs, ExportFilter(), page_rows=3)] == everything[3:]


class _PoolSpy:
    """A multiprocessing context that records the pools it makes (the parallel path really ran)."""

    def __init__(self, context, pools: list[int]):
        self.context, self.pools = context, pools

    def get_start_method(self) -> str:
        return self.context.get_start_method()

    def Pool(self, workers: int, **kwargs):  # noqa: N802 - multiprocessing's name
        self.pools.append(workers)
        return self.context.Pool(workers, **kwargs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["default", pytest.param("spawn", marks=pytest.mark.slow)])
def test_worker_processes_write_the_same_bytes(
    two_runs: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    import multiprocessing

    from db import export as export_module

    if start_method == "spawn" and not db_url.startswith("sqlite"):
        pytest.skip("one spawn check is enough")
    pools: list[int] = []
    real_context = export_module._process_context

    def context():
        base = multiprocessing.get_context("spawn") if start_method == "spawn" else real_context()
        return _PoolSpy(base, pools)

    monkeypatch.setattr(export_module, "_process_context", context)
    monkeypatch.setattr(export_module, "PAGE_ROWS", 3)  # many pages from a small database
    monkeypatch.setattr(export_module, "_MIN_PAGES_PER_SPAWNED_WORKER", 2)
    monkeypatch.setattr(export_module, "_MIN_PAGES_PER_FORKED_WORKER", 2)
    for fmt in ("jsonl", "chat"):
        for flt in (ExportFilter(), ExportFilter(dedup=True, min_tests_passed=1)):
            files = {}
            for workers in (1, 2):
                out = tmp_path / f"{fmt}-{flt.dedup}-{workers}.jsonl"
                stats = export(two_runs, out, fmt=fmt, flt=flt, split_val=0.3, workers=workers)
                files[workers] = (out.read_bytes(), val_path(out).read_bytes(), stats.train, stats.validation)
            assert files[1] == files[2] and files[1][2] > 0 and files[1][3] > 0
    assert pools == [2, 2, 2, 2]  # every two-worker export went through a pool


def test_workers_must_be_positive(two_runs: sa.Engine, tmp_path: Path) -> None:
    from selfinstruct.errors import UserError

    with pytest.raises(UserError, match="--workers must be at least 1"):
        export(two_runs, tmp_path / "x.jsonl", workers=0)
