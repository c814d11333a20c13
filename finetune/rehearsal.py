"""Rehearsal: pretraining-style text mixed into the instruct data at given token proportions.

Code Llama - Instruct kept 6% code and 2% natural language from pretraining in its instruct mix so that the
model does not forget how to write plain code and prose. Here a source is a list of documents (a .jsonl
file with a "text" field, a text file, a directory of files, or the small bundled set in finetune/data/).
Documents are cut at line boundaries into chunks that fit a sequence; each epoch draws chunks (cycling
through a shuffled order) until the source holds its proportion of the epoch's trained tokens. Every token
of a rehearsal chunk is trained; code chunks may get the infilling transform.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import BUNDLED, InfillingConfig, RehearsalSource
from finetune.data import TokenizedDoc
from finetune.infilling import encode_code_document, infill_ids
from selfinstruct.errors import UserError

BUNDLED_DIR = Path(__file__).parent / "data"
BUNDLED_FILES = {"code": BUNDLED_DIR / "rehearsal_code.jsonl", "text": BUNDLED_DIR / "rehearsal_text.jsonl"}
_TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".c", ".h", ".js", ".ts", ".go", ".rs", ".java", ".sh"}
_INFILL_MARGIN = 8  # special ids and split-boundary effects an infilling example adds over plain text


def read_documents(source: RehearsalSource) -> list[str]:
    """The documents of a source, in a stable order."""
    path = BUNDLED_FILES[source.kind] if source.path == BUNDLED else Path(source.path)
    if not path.exists():
        raise UserError(f"rehearsal source {source.name!r}: {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
        docs = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    elif path.suffix == ".jsonl":
        docs = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    docs.append(str(row["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}:{number}: a rehearsal .jsonl line must be an object with a "
                                    f"\"text\" field") from None
    else:
        docs = [path.read_text(encoding="utf-8", errors="replace")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"rehearsal source {source.name!r}: {path} holds no text")
    return docs


def chunk_document(tokenizer: Any, text: str, budget: int) -> list[str]:
    """Cut `text` at line boundaries into pieces of at most about `budget` tokens (a line longer than the
    budget is cut at characters)."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        cost = len(tokenizer.encode(line, bos=False, eos=False))
        while cost > budget:  # a single enormous line: cut it by characters, proportionally
            keep = max(1, len(line) * budget // cost // 2)
            chunks.append(line[:keep])
            line = line[keep:]
            cost = len(tokenizer.encode(line, bos=False, eos=False))
        if used + cost > budget and current:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(line)
        used += cost
    if current:
        chunks.append("".join(current))
    return [c for c in chunks if c.strip()]


@dataclass
class _PreparedSource:
    source: RehearsalSource
    chunks: list[str]


class RehearsalMixer:
    """Draws the rehearsal documents of each epoch for every configured source."""

    def __init__(self, tokenizer: Any, sources: list[RehearsalSource], seq_len: int, infilling: InfillingConfig):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.infilling = infilling
        if infilling.enabled and any(s.kind == "code" for s in sources):
            infill_ids(tokenizer)  # fail early on a tokenizer without infilling pieces
        budget = seq_len - 2 - (_INFILL_MARGIN if infilling.enabled else 0)
        self.sources = [
            _PreparedSource(s, [c for d in read_documents(s) for c in chunk_document(tokenizer, d, budget)])
            for s in sources
        ]
        self.total_proportion = sum(s.proportion for s in sources)

    def target_tokens(self, instruct_tokens: int) -> dict[str, int]:
        """Trained tokens each source contributes so that it holds its proportion of the whole mix."""
        whole = instruct_tokens / (1.0 - self.total_proportion)
        return {p.source.name: round(whole * p.source.proportion) for p in self.sources}

    def epoch_documents(self, instruct_tokens: int, seed: int, epoch: int) -> list[TokenizedDoc]:
        """This epoch's rehearsal documents: deterministic in (seed, epoch), so a resumed run redraws them."""
        targets = self.target_tokens(instruct_tokens)
        docs: list[TokenizedDoc] = []
        for index, prepared in enumerate(self.sources):
            rng = random.Random(f"rehearsal/{seed}/{epoch}/{index}")
            order = list(range(len(prepared.chunks)))
            rng.shuffle(order)
            got, k = 0, 0
            while got < targets[prepared.source.name]:
                doc = self._encode(prepared, prepared.chunks[order[k % len(order)]], rng)
                room = targets[prepared.source.name] - got
                if doc.n_trained > room:  # the last chunk is cut so the source holds its share exactly
                    doc = TokenizedDoc(ids=doc.ids[:room + 1], trained=doc.trained[:room + 1])
                docs.append(doc)
                got += doc.n_trained
                k += 1
        return docs

    def _encode(self, prepared: _PreparedSource, text: str, rng: random.Random) -> TokenizedDoc:
        if prepared.source.kind == "code" and self.infilling.enabled:
            doc = encode_code_document(self.tokenizer, text, rng, self.infilling.probability,
                                       self.infilling.spm_fraction)
        else:
            ids = list(self.tokenizer.encode(text, bos=True, eos=True))
            doc = TokenizedDoc(ids=ids, trained=[True] * len(ids))
        if len(doc) > self.seq_len:  # rare: the infilling split tokenized longer than the plain text
            doc = TokenizedDoc(ids=doc.ids[:self.seq_len], trained=doc.trained[:self.seq_len])
        return doc
