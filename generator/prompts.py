"""The three prompts of the Code Llama self-instruct recipe, verbatim, and the functions that fill them.

Source: Rozière et al., "Code Llama: Open Foundation Models for Code", arXiv 2308.12950 (v3),
section 2.5 and Appendix H, Figures 10 (problems, asked of Llama 2 70B chat), 11 (unit tests, asked of
Code Llama 7B Instruct, one-shot) and 12 (solutions, asked of Code Llama 7B Instruct, one-shot).

The text is kept exactly as the paper prints it, line breaks included, and with its spelling
("infere"). The paper's own placeholders `%%%question%%%` and `%%%test%%%` are filled by plain string
replacement, so braces in a problem or test can never be mistaken for format fields. The prompts carry
their `[INST]` tags themselves: backends send them as raw completion prompts (BOS is the backend's or the
tokenizer's business), which is how the paper's one-shot examples put earlier answers in the context.
"""

from __future__ import annotations

import re

PAPER_SOURCE = "Code Llama (arXiv 2308.12950 v3), Appendix H, Figures 10-12"

# Figure 10: Llama 2 70B writes the problems.
PROBLEMS_PROMPT = """[INST] Write 50 programming interview questions of easy and medium complexity. Provide questions on a
diverse range of subjects, and make sure no two questions are alike. Make sure the problems can be solved with a
single standalone Python function using standard libraries. [/INST]"""  # noqa: E501 (verbatim)

# Figure 11: Code Llama 7B Instruct writes unit tests (one-shot; stop at [/TESTS]).
TESTS_PROMPT = """[INST] Your task is to write 5 tests to check the correctness of a function that solves a programming
problem.
The tests must be between [TESTS] and [/TESTS] tags.
You must write the comment "#Test case n:" on a separate line directly above each assert statement,
where n represents the test case number, starting from 1 and increasing by one for each subsequent
test case.
Problem: Write a Python function to get the unique elements of a list.
[/INST]
[TESTS]
# Test case 1:
assert get_unique_elements([]) == []
# Test case 2:
assert get_unique_elements([1]) == [1]
# Test case 3:
assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]
[/TESTS]
[INST] Problem: %%%question%%%
[/INST]"""

# Figure 12: Code Llama 7B Instruct writes solutions, shown ONE test (one-shot; stop at [/PYTHON]).
SOLUTIONS_PROMPT = """[INST] Your task is to write a Python function to solve a programming problem.
The Python code must be between [PYTHON] and [/PYTHON] tags.
You are given one example test from which you can infere the function signature.
Problem: Write a Python function to get the unique elements of a list.
Test: assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]
[/INST]
[PYTHON]
def get_unique_elements(my_list):
    return list(set(my_list))
[/PYTHON]
[INST] Problem: %%%question%%%
Test: %%%test%%%
[/INST]"""

TESTS_OPEN, TESTS_CLOSE = "[TESTS]", "[/TESTS]"
PYTHON_OPEN, PYTHON_CLOSE = "[PYTHON]", "[/PYTHON]"

# Stop strings per stage. Problems end at EOS; tests and solutions at their closing tag.
TESTS_STOP = [TESTS_CLOSE]
SOLUTIONS_STOP = [PYTHON_CLOSE]


_PLACEHOLDER = re.compile(r"%%%(question|test)%%%")


def _fill(template: str, **values: str) -> str:
    """Replace the paper's placeholders in one pass, so filled text is never scanned again."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def problems_prompt(per_call: int = 50) -> str:
    """Figure 10's prompt; `per_call` other than the paper's 50 changes only that number."""
    if per_call < 1:
        raise ValueError(f"per_call must be >= 1, got {per_call}")
    return PROBLEMS_PROMPT.replace("Write 50 ", f"Write {per_call} ", 1)


def tests_prompt(problem: str, count: int = 5) -> str:
    """Figure 11's prompt for `problem`; `count` other than the paper's 5 changes only that number."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    prompt = TESTS_PROMPT.replace("write 5 tests", f"write {count} tests", 1)
    return _fill(prompt, question=problem.strip())


def solutions_prompt(problem: str, shown_test: str) -> str:
    """Figure 12's prompt for `problem`, showing the one test the solver may see."""
    return _fill(SOLUTIONS_PROMPT, question=problem.strip(), test=shown_test.strip())


# Answers in the formats the prompts ask for, as the paper's one-shot examples write them. The recipe
# warm-up (finetune/recipe_warmup.py) trains on these; the parsers (generator/parsers.py) read them back.

def problems_answer(problems: list[str]) -> str:
    """A numbered list, one problem per line, as a chat model answers Figure 10 (a space after [/INST])."""
    if not problems:
        raise ValueError("a problems answer needs at least one problem")
    return " " + "\n".join(f"{i}. {p.strip()}" for i, p in enumerate(problems, start=1))


def tests_answer(tests: list[str]) -> str:
    """A [TESTS] block with a "# Test case n:" comment above each assert, closed (Figure 11's example)."""
    if not tests:
        raise ValueError("a tests answer needs at least one test")
    body = "\n".join(f"# Test case {i}:\n{t.strip()}" for i, t in enumerate(tests, start=1))
    return f"\n{TESTS_OPEN}\n{body}\n{TESTS_CLOSE}"


def solution_answer(code: str) -> str:
    """A [PYTHON] block around `code`, closed (Figure 12's example)."""
    return f"\n{PYTHON_OPEN}\n{code.strip(chr(10))}\n{PYTHON_CLOSE}"


# The same prompts as chat messages, for servers that only speak `POST /chat/completions` (the
# openai backend's `api: chat`). The raw prompt stays the single source of the text; this only cuts it
# at its tags, so the one-shot example becomes a prior user/assistant pair and the question the last
# user turn. The server's chat template puts the tags back (for Llama 2 models, the same ones).

CHAT_TAGS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")  # a problem or test carrying one is refused (parsers)
_TURN_TAG = re.compile(r"(\[INST\]|\[/INST\])")
_SYS_BLOCK = re.compile(r"^<<SYS>>(.*?)<</SYS>>", re.DOTALL)
_SYS_TAGS = ("<<SYS>>", "<</SYS>>")


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """`[INST] u1 [/INST] a1 [INST] u2 [/INST]` as [system?, user, assistant, user] messages, tags dropped.

    Each message is stripped. A `<<SYS>> ... <</SYS>>` block at the start of the first turn becomes
    the system message; an explicit `system` comes first and the prompt's own block after it, joined
    by a blank line, so neither is lost. Meta's BOS/EOS markers (`<s>`, `</s>`) around turns are
    dropped. A prompt of any other shape (not ending in `[/INST]`, unpaired or nested tags, an empty
    turn, `<<SYS>>` outside the first turn) is a one-line ValueError.
    """
    parts = _TURN_TAG.split(prompt.strip())
    # parts: [before, "[INST]", user, "[/INST]", answer, "[INST]", user, "[/INST]", after]
    if parts[0].strip() not in ("", "<s>") or len(parts) == 1:
        raise ValueError(f"not a Llama 2 chat prompt (it must start with [INST]): {_head(prompt)}")
    if parts[-1].strip() or parts[-2] != "[/INST]":
        raise ValueError(f"not a Llama 2 chat prompt (it must end with [/INST]): ...{_tail(prompt)}")
    tags, texts = parts[1::2], parts[2:-1:2]
    if tags != ["[INST]", "[/INST]"] * (len(tags) // 2):
        raise ValueError(f"not a Llama 2 chat prompt ([INST] and [/INST] must alternate): {_head(prompt)}")

    messages: list[dict[str, str]] = []
    systems = [system.strip()] if system and system.strip() else []
    for turn, text in enumerate(texts):
        role = "user" if turn % 2 == 0 else "assistant"
        content = text.strip()
        if role == "assistant":  # "a1 </s><s>" between turns in Meta's encoding
            content = content.removesuffix("<s>").rstrip().removesuffix("</s>").strip()
        if turn == 0 and (block := _SYS_BLOCK.match(content)):
            if block.group(1).strip():
                systems.append(block.group(1).strip())
            content = content[block.end():].strip()
        if any(tag in content for tag in _SYS_TAGS):
            raise ValueError(f"<<SYS>> may only open the first [INST] turn, found in turn {turn + 1}: {_head(content)}")
        if not content:
            raise ValueError(f"turn {turn + 1} ({role}) of the prompt is empty: {_head(prompt)}")
        messages.append({"role": role, "content": content})
    if systems:
        messages.insert(0, {"role": "system", "content": "\n\n".join(systems)})
    return messages


def _head(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _tail(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text[-limit:]
