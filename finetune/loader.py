"""The order in which training sees its data, as a pure function of (seed, epoch, position).

Each epoch the instruct documents and that epoch's rehearsal draw are shuffled and grouped into rows
(packed, or one per row in length buckets). One optimizer step consumes `batch_size * grad_accum *
world_size` consecutive rows; process `rank` takes its micro-batches from them. Because every process
knows the whole plan, the number of trained tokens in the step (the loss normalizer) needs no
communication, and the data position of an exact resume is just (epoch, row).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from finetune.data import TokenizedDoc
from finetune.packing import Batch, bucket_rows, collate, pack_rows, pack_rows_sharing, row_width
from finetune.rehearsal import RehearsalMixer
from selfinstruct.errors import UserError


@dataclass
class DataPosition:
    """Where the next optimizer step's rows start; saved in every checkpoint."""

    epoch: int = 0
    row: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "row": self.row}

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> DataPosition:
        return cls(epoch=int(values["epoch"]), row=int(values["row"]))


@dataclass
class StepData:
    micro_batches: list[Batch]  # this process's, `grad_accum` of them
    n_targets: int  # trained tokens of the whole step, all processes together (the loss normalizer)
    n_tokens: int  # non-padding tokens of the whole step, all processes together (throughput)
    epoch: int


@dataclass
class _Epoch:
    docs: list[TokenizedDoc]
    rows: list[list[int]]
    n_rehearsal: int = 0


@dataclass
class TrainingStream:
    docs: list[TokenizedDoc]
    seq_len: int
    packing: bool
    batch_size: int
    grad_accum: int
    seed: int
    world_size: int = 1
    rank: int = 0
    mixer: RehearsalMixer | None = None
    share_prefixes: bool = False  # packing only: a prompt prefix written once per row (finetune/packing.py)
    _cache: dict[int, _Epoch] = field(default_factory=dict, repr=False)

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def epoch(self, epoch: int) -> _Epoch:
        if epoch not in self._cache:
            self._cache = {epoch: self._build(epoch)}  # keep only the current epoch
        return self._cache[epoch]

    def _build(self, epoch: int) -> _Epoch:
        instruct_tokens = sum(d.n_trained for d in self.docs)
        extra = self.mixer.epoch_documents(instruct_tokens, self.seed, epoch) if self.mixer else []
        docs = self.docs + extra
        rng = random.Random(f"order/{self.seed}/{epoch}")
        if self.packing:
            order = list(range(len(docs)))
            rng.shuffle(order)
            if self.share_prefixes:
                rows = pack_rows_sharing(docs, order, self.seq_len, rng)
            else:
                rows = [[order[i] for i in row] for row in pack_rows([len(docs[i]) for i in order], self.seq_len)]
        else:
            rows = bucket_rows([len(d) for d in docs], self.batch_size, rng)
        if len(rows) < self.rows_per_step:
            raise UserError(f"the training set fills {len(rows)} rows of {self.seq_len} tokens, but one step needs "
                            f"{self.rows_per_step} (batch_size x grad_accum x processes); lower train.batch_size "
                            f"or train.grad_accum, or add data")
        return _Epoch(docs, rows, len(extra))

    def fill(self) -> float | None:
        """The share of the first epoch's packed rows that holds tokens (None without packing)."""
        if not self.packing:
            return None
        first = self.epoch(0)
        return sum(row_width(first.docs, row, self.share_prefixes) for row in first.rows) / (
            len(first.rows) * self.seq_len)

    def steps_per_epoch(self) -> int:
        return len(self.epoch(0).rows) // self.rows_per_step

    def next_step(self, position: DataPosition) -> tuple[StepData, DataPosition]:
        """This process's micro-batches for the step at `position`, and the position after it."""
        current = self.epoch(position.epoch)
        if position.row + self.rows_per_step > len(current.rows):  # drop the ragged end of an epoch
            position = DataPosition(position.epoch + 1, 0)
            current = self.epoch(position.epoch)
        step_rows = current.rows[position.row:position.row + self.rows_per_step]
        width = self.seq_len if self.packing else None
        micro = []
        for k in range(self.grad_accum):
            start = (k * self.world_size + self.rank) * self.batch_size
            micro.append(collate(current.docs, step_rows[start:start + self.batch_size], width,
                                 share=self.packing and self.share_prefixes))
        n_targets = sum(current.docs[i].n_trained for row in step_rows for i in row)
        n_tokens = sum(len(current.docs[i]) for row in step_rows for i in row)
        nxt = DataPosition(position.epoch, position.row + self.rows_per_step)
        return StepData(micro, n_targets, n_tokens, position.epoch), nxt


def eval_batches(docs: list[TokenizedDoc], seq_len: int, packing: bool, batch_size: int, max_batches: int,
                 world_size: int = 1, rank: int = 0) -> tuple[list[Batch], int]:
    """(this process's validation batches, how many of them count). Every process gets the same number of
    batches (sharded models need every process in every forward); surplus copies are not counted."""
    if not docs:
        return [], 0
    if packing:
        rows = pack_rows([len(d) for d in docs], seq_len)
    else:
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        rows = [[i] for i in order]
    groups = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)][:max_batches * world_size]
    per_rank = math.ceil(len(groups) / world_size)
    mine = groups[rank::world_size]
    counted = len(mine)
    mine += [groups[0]] * (per_rank - counted)
    width = seq_len if packing else None
    return [collate(docs, g, width) for g in mine], counted
