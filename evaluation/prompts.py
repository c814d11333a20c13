"""The two prompt formats, and the code a completion yields in each.

base      the model continues `task.base_prompt` (HumanEval's prompt; elsewhere the problem and one test
          as a docstring), stopped at the Codex paper's stop sequences; the completion is what it wrote
          (outside HumanEval, after the docstring, so the program is the prompt and the code).
instruct  the Llama 2 chat format the fine-tuned models are trained on (`<s>[INST] problem [/INST]`,
          model/chat.py; the answer between [PYTHON] and [/PYTHON], stopped at [/PYTHON]); MBPP is asked
          zero-shot with the Code Llama paper's Figure 13 prompt, which shows one of its tests. The code
          is extracted exactly as the solutions stage does it (generator/parsers.py `parse_solution`):
          a completion it rejects (no [PYTHON] tag, cut off, no function, syntax error) is a failed
          sample with that reason, and is not run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from evaluation.benchmarks import Task
from generator.parsers import parse_solution
from generator.prompts import PYTHON_CLOSE
from model.chat import chat_text

PromptFormat = Literal["base", "instruct"]

# Codex paper (Chen et al. 2021), section 2.3: stop at a new top-level statement.
BASE_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
INSTRUCT_STOP = [PYTHON_CLOSE]

# Code Llama paper, Figure 13: zero-shot MBPP for Code Llama - Instruct (Figure 12's instructions, no example).
MBPP_INSTRUCT_PROMPT = """Your task is to write a Python function to solve a programming problem.
The Python code must be between [PYTHON] and [/PYTHON] tags.
You are given one example test from which you can infere the function signature.
Problem: %%%question%%%
Test: %%%test%%%"""


class Extracted(BaseModel):
    completion: str | None  # what is scored (task.prefix + completion); None: nothing to run
    failure: str | None = None  # why not: a generator/parsers.py reason and detail


def user_message(task: Task, kind: str) -> str:
    if kind == "mbpp" and task.shown_test:
        return (MBPP_INSTRUCT_PROMPT.replace("%%%question%%%", task.problem.strip())
                .replace("%%%test%%%", task.shown_test.strip()))
    return task.problem


def prompt_for(task: Task, kind: str, fmt: PromptFormat) -> str:
    """The prompt text sent to a backend (`kind` is the benchmark's kind, e.g. "mbpp")."""
    if fmt == "base":
        return task.base_prompt
    return chat_text([{"role": "user", "content": user_message(task, kind)}])


def stop_for(fmt: PromptFormat) -> list[str]:
    return list(BASE_STOP if fmt == "base" else INSTRUCT_STOP)


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def extract(task: Task, text: str, finish_reason: str | None, fmt: PromptFormat) -> Extracted:
    """The completion to score from a model's raw output, as the solutions stage would read it."""
    if fmt == "base":
        body = truncate_at_stop(text, BASE_STOP)
        return Extracted(completion=body if task.prefix else task.base_prompt + body)
    parsed = parse_solution(text, finish_reason)
    if not parsed.ok:
        assert parsed.failure is not None
        return Extracted(completion=None, failure=f"{parsed.failure.reason}: {parsed.failure.detail}")
    # HumanEval: the prompt (imports, signature, docstring) stays in front; the code redefines the function
    return Extracted(completion="\n" + parsed.code if task.prefix else parsed.code)
