"""Instruct examples from `selfinstruct export` files, tokenized with the Llama 2 chat template.

Two export formats are read (db/ writes them): `jsonl` rows {id, problem, tests, solution, provenance}
and `chat` rows {id, messages, text, prompt, answer}. A `jsonl` row becomes a user turn (the problem) and
an assistant turn (the solution in the configured answer format, the paper's "[PYTHON] ... [/PYTHON]" by
default). The template itself lives in model/chat.py and `Tokenizer.encode_dialog`; this module only
decides which tokens are trained: the answer and its EOS, never the prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from model.chat import ChatFormatError, chat_turns
from selfinstruct.errors import UserError


class InstructExample(BaseModel):
    """One training dialog (a user problem and an assistant answer), with where it came from."""

    model_config = ConfigDict(frozen=True)

    id: str
    messages: list[dict[str, str]]
    origin: str  # "file:line", for error messages


class _JsonlRow(BaseModel):
    id: str | int
    problem: str
    solution: str
    tests: list[str] = []


class _ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _ChatRow(BaseModel):
    id: str | int
    messages: list[_ChatMessage]


@dataclass(frozen=True)
class TokenizedDoc:
    """Token ids of one document and which of them are trained as targets (the answer and EOS)."""

    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_trained(self) -> int:
        # The first id of a document is never a target: nothing before it predicts it.
        return sum(self.trained[1:])


def _row_format(row: dict[str, Any]) -> Literal["jsonl", "chat"]:
    return "chat" if "messages" in row else "jsonl"


def instruct_example(row: dict[str, Any], answer_format: str, system: str | None, origin: str) -> InstructExample:
    """A `jsonl` export row (id, problem, solution) as a dialog: the problem asked, the solution answered."""
    return _example(row, "jsonl", answer_format, system, origin)


def _example(row: dict[str, Any], fmt: Literal["jsonl", "chat"], answer_format: str,
             system: str | None, origin: str) -> InstructExample:
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if fmt == "jsonl":
        parsed = _JsonlRow.model_validate(row)
        answer = answer_format.replace("{solution}", parsed.solution.strip("\n"))
        messages += [{"role": "user", "content": parsed.problem}, {"role": "assistant", "content": answer}]
    else:
        chat = _ChatRow.model_validate(row)
        if system and chat.messages and chat.messages[0].role == "system":
            messages = []  # the row's own system message wins
        messages += [m.model_dump() for m in chat.messages]
        parsed = chat
    if messages[-1]["role"] != "assistant":
        raise ChatFormatError("the dialog must end with an assistant message (the trained answer)")
    chat_turns(messages)  # type: ignore[arg-type]  # validates roles and refuses control tags
    return InstructExample(id=str(parsed.id), messages=messages, origin=origin)


def read_export(path: str | Path, fmt: Literal["auto", "jsonl", "chat"] = "auto",
                answer_format: str = "[PYTHON]\n{solution}\n[/PYTHON]",
                system: str | None = None, allow_empty: bool = False) -> list[InstructExample]:
    """All examples of one export file; any bad line is a `UserError` naming the file and line, and so is
    an empty file unless `allow_empty`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"export file not found: {path}")
    examples: list[InstructExample] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{origin}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{origin}: expected a JSON object, got {type(row).__name__}")
            row_fmt = _row_format(row) if fmt == "auto" else fmt
            try:
                examples.append(_example(row, row_fmt, answer_format, system, origin))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "row"
                raise UserError(f"{origin}: not a {row_fmt} export row ({where}: {err['msg']})") from None
            except ChatFormatError as exc:
                raise UserError(f"{origin}: {exc}") from None
    if not examples and not allow_empty:
        raise UserError(f"export file {path} is empty: export some triples first (`selfinstruct export`)")
    return examples


def read_exports(paths: Iterable[str | Path], fmt: Literal["auto", "jsonl", "chat"] = "auto",
                 answer_format: str = "[PYTHON]\n{solution}\n[/PYTHON]",
                 system: str | None = None) -> list[InstructExample]:
    """The examples of several export files together. One empty file among others is allowed (an export of
    a run where nothing passed, next to another export); all of them empty is a `UserError`."""
    paths = list(paths)
    if not paths:
        raise UserError("no training data: pass --data EXPORT.jsonl (or set data.paths in the config)")
    if len(paths) == 1:
        examples = read_export(paths[0], fmt, answer_format, system)
    else:
        examples = [e for p in paths for e in read_export(p, fmt, answer_format, system, allow_empty=True)]
        if not examples:
            raise UserError(f"export files {', '.join(str(p) for p in paths)} are all empty: export some triples "
                            f"first (`selfinstruct export`)")
    check_unique_ids(examples)
    return examples


def check_unique_ids(examples: Iterable[InstructExample]) -> None:
    """Two rows with one id are the same triple twice (or a train row leaking into validation)."""
    seen: dict[str, str] = {}
    for example in examples:
        if example.id in seen:
            raise UserError(f"{example.origin}: duplicate example id {example.id!r} (first at {seen[example.id]})")
        seen[example.id] = example.origin


def split_validation(examples: list[InstructExample], fraction: float) -> tuple[list[InstructExample],
                                                                              list[InstructExample]]:
    """(train, validation): the validation set is the examples whose id hashes lowest, so the split is the
    same whatever the file order and grows stably with the data. At least one example each way."""
    if fraction <= 0.0 or len(examples) < 2:
        return list(examples), []
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))

    def rank(example: InstructExample) -> str:
        return hashlib.sha256(example.id.encode()).hexdigest()

    val_ids = {e.id for e in sorted(examples, key=rank)[:n_val]}
    return [e for e in examples if e.id not in val_ids], [e for e in examples if e.id in val_ids]


def tokenize_example(tokenizer: Any, example: InstructExample) -> TokenizedDoc:
    """Ids of the whole dialog and its answer mask (answer ids and EOS trained), from model/'s tokenizer."""
    ids, answer_mask = tokenizer.encode_dialog(example.messages)  # type: ignore[arg-type]
    return TokenizedDoc(ids=list(ids), trained=[bool(m) for m in answer_mask])


def tokenize_examples(tokenizer: Any, examples: list[InstructExample], seq_len: int) -> list[TokenizedDoc]:
    """Tokenize every example; one longer than the sequence length is a `UserError` (never silently cut)."""
    docs = []
    for example in examples:
        doc = tokenize_example(tokenizer, example)
        if len(doc) > seq_len:
            raise UserError(f"{example.origin}: example {example.id!r} has {len(doc)} tokens, more than "
                            f"data.seq_len={seq_len}; raise data.seq_len or drop the example")
        docs.append(doc)
    return docs


__all__ = ["InstructExample", "TokenizedDoc", "check_unique_ids", "instruct_example", "read_export", "read_exports",
           "split_validation", "tokenize_example", "tokenize_examples"]
