"""SentencePiece tokenizer with Llama 2's chat format and Code Llama's infilling format.

- Chat: each turn from `model.chat.chat_turns` is encoded as ONE string with BOS (and EOS when the turn
  is finished), exactly as Meta's reference does; `encode_dialog` also returns which ids are trained
  (the answer's ids and its EOS).
- Infilling: the pieces ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> are looked up by piece (their ids differ between
  vocabularies), and the suffix is encoded without SentencePiece's implicit leading space.
- Safety: text is only ever encoded as text, so "<s>", "[INST]" or "▁<PRE>" inside user text become
  ordinary pieces, never control ids (control symbols are id-only in SentencePiece).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from model.chat import ChatFormatError, Message, chat_turns
from selfinstruct.errors import UserError

# Encoding "☺" + text and dropping the ids of "☺" gives text's ids without the dummy leading space
# (Code Llama's `encode_infilling` does the same with a hard-coded [2:]).
_SENTINEL = "☺"

InfillMode = Literal["psm", "spm"]


class Tokenizer:
    def __init__(self, path: str | Path | None = None, *, model_proto: bytes | None = None):
        import sentencepiece as spm

        if (path is None) == (model_proto is None):
            raise ValueError("give exactly one of path or model_proto")
        self.path = Path(path) if path is not None else None
        self.sp = spm.SentencePieceProcessor()
        try:
            if path is not None:
                if not Path(path).is_file():
                    raise UserError(f"{path}: tokenizer model not found")
                self.sp.Load(str(path))
            else:
                self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as exc:
            raise UserError(f"{path or 'tokenizer'}: not a SentencePiece model ({exc})") from None
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.prefix_id = self._piece_id("▁<PRE>")
        self.suffix_id = self._piece_id("▁<SUF>")
        self.middle_id = self._piece_id("▁<MID>")
        self.eot_id = self._piece_id("▁<EOT>")
        self._sentinel_ids = self.sp.encode(_SENTINEL)

    def _piece_id(self, piece: str) -> int | None:
        """The id of `piece`, or None when the vocabulary lacks it (SentencePiece maps unknowns to unk)."""
        idx = self.sp.piece_to_id(piece)
        return None if idx == self.sp.unk_id() or self.sp.id_to_piece(idx) != piece else idx

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def pad_id(self) -> int:
        """An id safe to pad with: SentencePiece's pad id, or EOS where the model has none (Llama: -1).

        Padding must be masked out by position (attention/loss masks), never recognised by its id.
        """
        pad = self.sp.pad_id()
        return pad if pad >= 0 else self.eos_id

    @property
    def has_infilling(self) -> bool:
        return None not in (self.prefix_id, self.suffix_id, self.middle_id, self.eot_id)

    # -- plain text -----------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_no_space(self, text: str) -> list[int]:
        """`text` without SentencePiece's implicit leading space (infilling suffixes, continuations)."""
        ids: list[int] = self.sp.encode(_SENTINEL + text)
        n = len(self._sentinel_ids)
        if ids[:n] == self._sentinel_ids:
            return ids[n:]
        # The sentinel merged into the text's first piece (a vocabulary with such pieces): drop a lone
        # leading "▁" instead, which is what the dummy prefix becomes in front of most text.
        ids = self.sp.encode(text)
        return ids[1:] if ids and self.sp.id_to_piece(ids[0]) == "▁" else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def decode_continuation(self, ids: Sequence[int]) -> str:
        """Text of ids that continue earlier text: a leading "▁" stays a space (SentencePiece's `decode`
        drops it, taking it for the dummy prefix). Generated completions and infilled middles use this, so
        that prompt text + completion text is the text of prompt ids + completion ids."""
        text = self.decode(list(self._sentinel_ids) + list(ids))
        return text[len(_SENTINEL):] if text.startswith(_SENTINEL) else self.decode(ids)

    def id_to_piece(self, idx: int) -> str:
        return self.sp.id_to_piece(idx)

    # -- chat -----------------------------------------------------------------------------------

    def encode_dialog(self, messages: list[Message]) -> tuple[list[int], list[bool]]:
        """Ids of a dialog and, per id, whether it is a trained answer token (answer ids and their EOS).

        Each finished turn is BOS + "[INST] {user} [/INST] {answer} " + EOS encoded as ONE string; the
        prompt's ids are a prefix of it (SentencePiece pieces never cross the space after "[/INST]"), and
        the ids past that prefix are the answer's.
        """
        ids: list[int] = []
        mask: list[bool] = []
        for turn in self._turns(messages):
            prompt_ids = self.encode(turn.prompt, bos=True)
            if turn.answer is None:
                ids += prompt_ids
                mask += [False] * len(prompt_ids)
                continue
            full = self.encode(turn.prompt + turn.answer, bos=True, eos=True)
            boundary = _common_prefix_len(prompt_ids, full)
            ids += full
            mask += [False] * boundary + [True] * (len(full) - boundary)
        return ids, mask

    def encode_dialog_prompt(self, messages: list[Message]) -> list[int]:
        """Ids of a dialog that ends with a user message, ready for generation (the open turn has no EOS)."""
        if not messages or messages[-1]["role"] != "user":
            raise UserError("a generation prompt must end with a user message")
        return self.encode_dialog(messages)[0]

    @staticmethod
    def _turns(messages: list[Message]):
        try:
            return chat_turns(messages)
        except ChatFormatError as exc:
            raise UserError(f"cannot format dialog: {exc}") from None

    # -- infilling ------------------------------------------------------------------------------

    def encode_infill(self, prefix: str, suffix: str, mode: InfillMode = "psm") -> list[int]:
        """Code Llama's infilling prompt; generation continues with the middle and ends at `eot_id`.

        psm: [BOS, PRE] + enc(prefix) + [SUF] + enc_nospace(suffix) + [MID]
        spm: [BOS, PRE, SUF] + enc_nospace(suffix) + [MID] + enc(prefix)
        """
        if not self.has_infilling:
            raise UserError(f"{self.path or 'tokenizer'}: vocabulary has no infilling pieces (▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>)")
        assert self.prefix_id is not None and self.suffix_id is not None and self.middle_id is not None
        if mode == "psm":
            return ([self.bos_id, self.prefix_id] + self.encode(prefix) + [self.suffix_id]
                    + self.encode_no_space(suffix) + [self.middle_id])
        if mode == "spm":
            return ([self.bos_id, self.prefix_id, self.suffix_id] + self.encode_no_space(suffix)
                    + [self.middle_id] + self.encode(prefix))
        raise UserError(f"unknown infilling mode {mode!r}; use 'psm' or 'spm'")


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
