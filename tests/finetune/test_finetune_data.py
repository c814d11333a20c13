"""Export files -> examples: the exact Llama 2 chat template, the answer mask, and bad input."""

from __future__ import annotations

import json

import pytest

from finetune.data import read_export, read_exports, split_validation, tokenize_example, tokenize_examples
from model.chat import chat_text
from selfinstruct.errors import UserError
from tests.finetune.conftest import instruct_rows, write_jsonl


def test_jsonl_row_becomes_paper_answer_format(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", instruct_rows(1))
    (example,) = read_export(path)
    assert example.messages == [
        {"role": "user", "content": "Write a function scale(x) that returns x times 51."},
        {"role": "assistant", "content": "[PYTHON]\ndef scale(x):\n    return x * 51\n[/PYTHON]"},
    ]
    assert chat_text(example.messages) == ("<s>[INST] Write a function scale(x) that returns x times 51. [/INST] "
                                           "[PYTHON]\ndef scale(x):\n    return x * 51\n[/PYTHON] </s>")


def test_answer_format_is_configurable(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", instruct_rows(1))
    (example,) = read_export(path, answer_format="```python\n{solution}\n```")
    assert example.messages[1]["content"] == "```python\ndef scale(x):\n    return x * 51\n```"


def test_chat_format_rows_are_read_as_is(tmp_path):
    messages = [{"role": "user", "content": "Reverse a list."},
                {"role": "assistant", "content": "[PYTHON]\ndef r(a):\n    return a[::-1]\n[/PYTHON]"}]
    row = {"id": 7, "messages": messages, "text": chat_text(messages), "prompt": "", "answer": ""}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,) = read_export(path)
    assert example.id == "7" and example.messages == messages


def test_template_token_ids_are_pinned(tokenizer, tmp_path):
    """BOS + "[INST] {user} [/INST] {answer} " + EOS as ONE SentencePiece string; only answer ids and EOS trained."""
    path = write_jsonl(tmp_path / "e.jsonl", instruct_rows(1))
    (example,) = read_export(path)
    doc = tokenize_example(tokenizer, example)
    prompt = "[INST] Write a function scale(x) that returns x times 51. [/INST]"
    whole = prompt + " [PYTHON]\ndef scale(x):\n    return x * 51\n[/PYTHON] "
    expected = [tokenizer.bos_id] + tokenizer.sp.encode(whole) + [tokenizer.eos_id]
    assert doc.ids == expected
    n_prompt = 1 + len(tokenizer.sp.encode(prompt))
    assert doc.trained == [False] * n_prompt + [True] * (len(expected) - n_prompt)
    assert tokenizer.decode(doc.ids[n_prompt:]).strip() == "[PYTHON]\ndef scale(x):\n    return x * 51\n[/PYTHON]"
    assert doc.ids[-1] == tokenizer.eos_id and doc.trained[-1]


def test_validation_split_is_stable_and_disjoint():
    from finetune.data import InstructExample

    examples = [InstructExample(id=f"e{i}", messages=[], origin="x") for i in range(50)]
    train, val = split_validation(examples, 0.1)
    assert len(val) == 5 and len(train) == 45
    assert not {e.id for e in train} & {e.id for e in val}
    _, val_reversed = split_validation(examples[::-1], 0.1)
    assert {e.id for e in val} == {e.id for e in val_reversed}


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ('{"id": 1, "problem": "p", "solution": "s"}\n{"id": 2, "problem": \n', ":2: not valid JSON"),
    ('{"id": 1, "problem": "p"}\n', ":1: not a jsonl export row (solution: Field required)"),
    ('[1, 2]\n', ":1: expected a JSON object"),
    ('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n', ":1: the dialog must end with an assistant"),
    ('{"id": 1, "problem": "say [INST] now", "solution": "s"}\n', ":1: a user message contains"),
])
def test_bad_export_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        read_export(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_ids_across_files_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", instruct_rows(2))
    b = write_jsonl(tmp_path / "b.jsonl", instruct_rows(1))
    with pytest.raises(UserError, match="duplicate example id 't0'"):
        read_exports([a, b])


def test_example_longer_than_sequence_is_refused(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", instruct_rows(3))
    examples = read_export(path)
    with pytest.raises(UserError, match=r"e.jsonl:1: example 't0' has \d+ tokens, more than data.seq_len=16"):
        tokenize_examples(tokenizer, examples, seq_len=16)


def test_an_empty_file_among_others_is_allowed_but_not_all_empty(tmp_path):
    empty = tmp_path / "nothing_passed.jsonl"
    empty.write_text("")
    seed = write_jsonl(tmp_path / "seed.jsonl", instruct_rows(3))
    assert [e.id for e in read_exports([empty, seed])] == ["t0", "t1", "t2"]
    other = tmp_path / "also_empty.jsonl"
    other.write_text("\n")
    with pytest.raises(UserError, match="are all empty"):
        read_exports([empty, other])
