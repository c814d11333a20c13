"""Duplicate filters for generated problems: exact (normalized hash) and near (MinHash LSH).

Both are deterministic and order-dependent in the one sensible way: the first problem seen is kept
and later ones that repeat it are dropped, with the kept problem named in the reason. A resumed run
rebuilds both indexes from the problems already accepted in the database, in acceptance order, so it
makes the same decisions an uninterrupted run makes.
"""

from __future__ import annotations

from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH

from generator.normalize import normalize_problem, problem_hash, words


class ExactDeduplicator:
    """Drops a problem whose normalized text was seen before."""

    def __init__(self, seen_hashes: Iterable[str] = ()) -> None:
        self._seen: set[str] = set(seen_hashes)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, text: str) -> bool:
        """True if `text` is new (and is now remembered), False if it is a duplicate."""
        key = problem_hash(text)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


class NearDeduplicator:
    """Drops a problem whose word-shingle Jaccard similarity to a kept one is `threshold` or more.

    MinHash signatures over word `shingle`-grams (whole text when shorter), indexed with LSH; LSH
    candidates are confirmed by their MinHash Jaccard estimate, so a bucket collision alone never
    drops a problem. The permutations are drawn once from a fixed seed, so signatures and decisions
    are reproducible.
    """

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, shingle: int = 3, seed: int = 1) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.shingle = shingle
        self._num_perm = num_perm
        self._template = MinHash(num_perm=num_perm, seed=seed)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._texts: dict[str, str] = {}
        self._signatures: dict[str, MinHash] = {}

    def __len__(self) -> int:
        return len(self._texts)

    def _signature(self, text: str) -> MinHash:
        tokens = words(text) or [normalize_problem(text)]
        n = min(self.shingle, len(tokens))
        shingles = {" ".join(tokens[i : i + n]).encode("utf-8") for i in range(len(tokens) - n + 1)}
        signature = MinHash(
            num_perm=self._num_perm,
            seed=self._template.seed,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        signature.update_batch(sorted(shingles))
        return signature

    def _nearest(self, signature: MinHash) -> str | None:
        candidates = [
            key for key in self._lsh.query(signature) if signature.jaccard(self._signatures[key]) >= self.threshold
        ]
        if not candidates:
            return None
        return self._texts[min(candidates, key=lambda key: int(key.split(":", 1)[0]))]

    def find(self, text: str) -> str | None:
        """The kept problem that `text` nearly duplicates (the earliest if several), or None."""
        return self._nearest(self._signature(text))

    def add(self, text: str) -> str | None:
        """Keep `text` unless it nearly duplicates a kept problem; returns that problem, or None if kept."""
        signature = self._signature(text)
        duplicate_of = self._nearest(signature)
        if duplicate_of is not None:
            return duplicate_of
        key = f"{len(self._texts)}:{problem_hash(text)}"
        self._lsh.insert(key, signature)
        self._texts[key] = text
        self._signatures[key] = signature
        return None
