"""Rows and batches: packing several documents per sequence, or length-bucketed padded batches.

A packed row keeps attention inside each document (`doc_ids`) and restarts positions at every document,
so a packed batch gives the same loss as the same documents one per row (a test pins this). Targets are
built per document: the last token of one document never predicts the first of the next. Padding has
target -100 (ignored), token id 0 (never -1, the SentencePiece pad id, which no embedding accepts) and a
document id of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from finetune.data import TokenizedDoc

IGNORE_INDEX = -100
PAD_TOKEN = 0


@dataclass
class Batch:
    """One micro-batch, ready for `model(tokens, positions, doc_ids)` and a summed cross-entropy."""

    tokens: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where nothing is trained
    real: torch.Tensor  # (B, T) bool, False on padding
    positions: torch.Tensor | None = None  # (B, T) int64, restarted per document; None: 0..T-1
    doc_ids: torch.Tensor | None = None  # (B, T) int64; None: one document per row

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def n_tokens(self) -> int:
        """Tokens that are not padding (prompt and answer tokens alike)."""
        return int(self.real.sum())

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.tokens), move(self.targets), move(self.real), move(self.positions),
                     move(self.doc_ids))  # type: ignore[arg-type]


def doc_targets(doc: TokenizedDoc) -> list[int]:
    """Next-token targets of one document: ids[t+1] where that id is trained, else IGNORE_INDEX."""
    out = [doc.ids[t + 1] if doc.trained[t + 1] else IGNORE_INDEX for t in range(len(doc) - 1)]
    return out + [IGNORE_INDEX]


def pack_rows(lengths: list[int], seq_len: int, open_rows: int = 16) -> list[list[int]]:
    """Group document indices into rows of at most `seq_len` tokens, in order, first fit over the last
    `open_rows` rows (a bounded first-fit: nearly as dense as sorting, keeps the shuffled order)."""
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for index, length in enumerate(lengths):
        if length > seq_len:
            raise ValueError(f"document {index} has {length} tokens, more than seq_len={seq_len}")
        for r in range(first_open, len(rows)):
            if room[r] >= length:
                rows[r].append(index)
                room[r] -= length
                break
        else:
            rows.append([index])
            room.append(seq_len - length)
            first_open = max(first_open, len(rows) - open_rows)
    return rows


def bucket_rows(lengths: list[int], batch_size: int, rng: random.Random, window: int = 64) -> list[list[int]]:
    """One document per row, ordered so that each run of `batch_size` rows has similar lengths (little
    padding): shuffle, sort inside windows of `window` batches, then shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = window * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [[i] for batch in batches for i in batch]


def collate(docs: list[TokenizedDoc], rows: list[list[int]], seq_len: int | None) -> Batch:
    """Rows of documents as one batch. `seq_len` fixes the width (packing); None pads to the longest row.

    Rows holding one document each get no `doc_ids`/`positions` (plain causal attention); rows holding
    several get both.
    """
    packed = any(len(row) > 1 for row in rows)
    widths = [sum(len(docs[i]) for i in row) for row in rows]
    width = seq_len if seq_len is not None else max(widths)
    shape = (len(rows), width)
    tokens = torch.full(shape, PAD_TOKEN, dtype=torch.long)
    targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for d, index in enumerate(row):
            doc = docs[index]
            n = len(doc)
            tokens[r, offset:offset + n] = torch.tensor(doc.ids)
            targets[r, offset:offset + n] = torch.tensor(doc_targets(doc))
            positions[r, offset:offset + n] = torch.arange(n)
            doc_ids[r, offset:offset + n] = d
            offset += n
    real = doc_ids >= 0
    if packed:
        # Padding attends only to itself: give it an id no document has.
        doc_ids = torch.where(real, doc_ids, torch.full_like(doc_ids, 1 << 30))
        return Batch(tokens, targets, real, positions, doc_ids)
    return Batch(tokens, targets, real)
