"""Code Llama's infilling (fill-in-the-middle) training transform, paper section 2.3.

With probability `probability` a code document is split at two uniformly random character positions into
prefix, middle and suffix, and rewritten in one of two orders, half each by default:

- prefix-suffix-middle (PSM): BOS PRE enc(prefix) SUF enc_nospace(suffix) MID enc_nospace(middle) EOT
- suffix-prefix-middle (SPM): BOS PRE SUF enc_nospace(suffix) MID enc(prefix) enc_nospace(middle) EOT

(everything before the middle is exactly the inference prompt, `Tokenizer.encode_infill`; the model learns
to write the middle and stop at EOT). Otherwise the document stays plain: BOS enc(text) EOS. Every token is trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from finetune.data import TokenizedDoc
from selfinstruct.errors import UserError


@dataclass(frozen=True)
class InfillSplit:
    prefix: str
    middle: str
    suffix: str
    mode: Literal["psm", "spm"]


def split_document(text: str, rng: random.Random, spm_fraction: float = 0.5) -> InfillSplit:
    """Character-level split at two uniform cut points (the middle may be empty, as in the paper)."""
    a, b = sorted(rng.randint(0, len(text)) for _ in range(2))
    mode: Literal["psm", "spm"] = "spm" if rng.random() < spm_fraction else "psm"
    return InfillSplit(text[:a], text[a:b], text[b:], mode)


def infill_ids(tokenizer: Any) -> tuple[int, int, int, int]:
    """(prefix, suffix, middle, eot) ids of the tokenizer; a tokenizer without them is a `UserError`."""
    ids = (tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id, tokenizer.eot_id)
    if any(i is None for i in ids):
        raise UserError("data.infilling.enabled needs a tokenizer with infilling pieces (<PRE> <SUF> <MID> <EOT>), "
                        "as Code Llama 7B/13B/70B have; this tokenizer has none")
    return ids  # type: ignore[return-value]


def encode_split(tokenizer: Any, split: InfillSplit) -> list[int]:
    """The inference prompt of model/'s tokenizer (`encode_infill`), then the middle and EOT: training
    sees exactly the ids that generation will continue from."""
    eot = infill_ids(tokenizer)[3]
    prompt = tokenizer.encode_infill(split.prefix, split.suffix, split.mode)
    return list(prompt) + list(tokenizer.encode_no_space(split.middle)) + [eot]


def encode_code_document(tokenizer: Any, text: str, rng: random.Random, probability: float,
                         spm_fraction: float) -> TokenizedDoc:
    """A code document for training: an infilling example with probability `probability`, else plain."""
    if rng.random() < probability:
        ids = encode_split(tokenizer, split_document(text, rng, spm_fraction))
    else:
        ids = list(tokenizer.encode(text, bos=True, eos=True))
    return TokenizedDoc(ids=ids, trained=[True] * len(ids))
