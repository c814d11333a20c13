"""Rows and batches: packing several documents per sequence, or length-bucketed padded batches.

A packed row keeps attention inside each document (`doc_ids`) and restarts positions at every document,
so a packed batch gives the same loss as the same documents one per row (a test pins this). Targets are
built per document: the last token of one document never predicts the first of the next. Padding has
target -100 (ignored), token id 0 (never -1, the SentencePiece pad id, which no embedding accepts) and a
document id of its own.

Shared prompt prefixes (`data.share_prefixes`): documents that start with the same prompt (a system
message, a one-shot example: every recipe warm-up document of a stage shares a few hundred tokens) can
sit in one row with that prefix written once. A later document keeps only its own tail, positions
continuing where the prefix ends, and reads the earlier document's copy of the prefix through an extra
visible span (`Batch.shared`). The prefix attends only to itself in either layout, so its keys and values
are the same and the loss is the same as one document per row (a test pins this): the saving is the
prefix's compute (the recipe warm-up: 72 rows of 1024 tokens an epoch instead of 96).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from finetune.data import TokenizedDoc

IGNORE_INDEX = -100
PAD_TOKEN = 0
MIN_SHARED = 16  # a shorter common prefix is not worth an extra span
_FAMILY_TOKENS = 64  # documents are grouped for sharing by this many leading tokens


@dataclass
class Batch:
    """One micro-batch, ready for `model(tokens, positions, doc_ids)` and a summed cross-entropy."""

    tokens: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where nothing is trained
    real: torch.Tensor  # (B, T) bool, False on padding
    positions: torch.Tensor | None = None  # (B, T) int64, restarted per document; None: 0..T-1
    doc_ids: torch.Tensor | None = None  # (B, T) int64; None: one document per row
    shared: torch.Tensor | None = None  # (B, T, 2) int64: a [start, end) span of the row each token also sees

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
                     move(self.doc_ids), move(self.shared))  # type: ignore[arg-type]


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


def shared_length(anchor: TokenizedDoc, doc: TokenizedDoc) -> int:
    """How many leading tokens `doc` can read from `anchor`'s copy instead of its own: their common prefix
    less its last token (that position's target is `doc`'s own next token), or 0 when that is under
    MIN_SHARED tokens or would drop one of `doc`'s trained targets."""
    limit = min(len(anchor), len(doc))
    common = 0
    while common < limit and anchor.ids[common] == doc.ids[common]:
        common += 1
    shared = common - 1
    if shared < MIN_SHARED or any(doc.trained[1:shared + 1]):
        return 0
    return shared


def row_layout(docs: list[TokenizedDoc], row: list[int]) -> list[tuple[int, int]]:
    """(the row position of the document whose prefix it reads, or -1; how many tokens) for each document
    of a row: the longest prefix shared with an earlier document written in full."""
    layout: list[tuple[int, int]] = []
    for k, index in enumerate(row):
        best = (-1, 0)
        for a in range(k):
            if layout[a][0] == -1 and (s := shared_length(docs[row[a]], docs[index])) > best[1]:
                best = (a, s)
        layout.append(best)
    return layout


def row_width(docs: list[TokenizedDoc], row: list[int], share: bool) -> int:
    """Tokens a row takes: with `share`, documents that read a shared prefix count only their tail."""
    if not share:
        return sum(len(docs[i]) for i in row)
    return sum(len(docs[i]) - shared for i, (_, shared) in zip(row, row_layout(docs, row), strict=True))


def pack_rows_sharing(docs: list[TokenizedDoc], order: list[int], seq_len: int, rng: random.Random,
                      open_rows: int = 16) -> list[list[int]]:
    """Rows for `docs` where documents with a common prompt sit together: `order` (shuffled) is sorted by
    the documents' first tokens, so the same prompt's documents come in a run (in shuffled order among
    themselves); each goes to the open row where it costs the fewest tokens (a row already holding its
    prompt in full takes only its tail; ties: the first row); the rows are shuffled at the end. Which
    documents share a row changes no document's loss, only how many tokens are computed."""
    order = sorted(order, key=lambda i: docs[i].ids[:_FAMILY_TOKENS])
    rows: list[list[int]] = []
    room: list[int] = []
    full: list[list[int]] = []  # per row, the documents written in full (the ones others can read)
    first_open = 0
    for index in order:
        doc = docs[index]
        if len(doc) > seq_len:
            raise ValueError(f"document {index} has {len(doc)} tokens, more than seq_len={seq_len}")
        best: tuple[int, int] | None = None  # (cost, row)
        for r in range(first_open, len(rows)):
            shared = max((shared_length(docs[a], doc) for a in full[r]), default=0)
            cost = len(doc) - shared
            if cost <= room[r] and (best is None or cost < best[0]):
                best = (cost, r)
        if best is None:
            rows.append([index])
            room.append(seq_len - len(doc))
            full.append([index])
            first_open = max(first_open, len(rows) - open_rows)
            continue
        cost, r = best
        rows[r].append(index)
        room[r] -= cost
        if cost == len(doc):
            full[r].append(index)
    rng.shuffle(rows)
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


def collate(docs: list[TokenizedDoc], rows: list[list[int]], seq_len: int | None, share: bool = False) -> Batch:
    """Rows of documents as one batch. `seq_len` fixes the width (packing); None pads to the longest row.

    Rows holding one document each get no `doc_ids`/`positions` (plain causal attention); rows holding
    several get both. With `share`, a document whose prompt an earlier one in its row already holds is
    written from where they differ (`row_layout`), and `shared` gives the span of the row it also reads.
    """
    packed = any(len(row) > 1 for row in rows)
    widths = [row_width(docs, row, share) for row in rows]
    width = seq_len if seq_len is not None else max(widths)
    shape = (len(rows), width)
    tokens = torch.full(shape, PAD_TOKEN, dtype=torch.long)
    targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    spans = torch.zeros((*shape, 2), dtype=torch.long)
    any_shared = False
    for r, row in enumerate(rows):
        offset = 0
        starts: list[int] = []
        layout = row_layout(docs, row) if share else [(-1, 0)] * len(row)
        for d, (index, (anchor, skip)) in enumerate(zip(row, layout, strict=True)):
            doc = docs[index]
            n = len(doc) - skip
            starts.append(offset)
            tokens[r, offset:offset + n] = torch.tensor(doc.ids[skip:])
            targets[r, offset:offset + n] = torch.tensor(doc_targets(doc)[skip:])
            positions[r, offset:offset + n] = torch.arange(skip, len(doc))
            doc_ids[r, offset:offset + n] = d
            if skip:
                spans[r, offset:offset + n] = torch.tensor([starts[anchor], starts[anchor] + skip])
                any_shared = True
            offset += n
    real = doc_ids >= 0
    if packed:
        # Padding attends only to itself: give it an id no document has.
        doc_ids = torch.where(real, doc_ids, torch.full_like(doc_ids, 1 << 30))
        return Batch(tokens, targets, real, positions, doc_ids, spans if any_shared else None)
    return Batch(tokens, targets, real)
