"""Seeds derived from the run's seed and an item's identity, so a resumed run asks the same questions.

A seed depends only on (run seed, purpose, identity): not on batch composition, process, worker or
time. The identity of a problem-writing call is its index; that of a problem is the hash of its
normalized text (stable across databases, unlike row ids). Seeds are 31-bit: every backend takes them
(vLLM adds the sample index for n > 1, which stays far from overflow).
"""

from __future__ import annotations

import hashlib
import random

SEED_BITS = 31


def derive_seed(run_seed: int, purpose: str, identity: str | int) -> int:
    """A stable 31-bit seed for `purpose` ("problems", "tests", "solutions", ...) and `identity`."""
    digest = hashlib.sha256(f"{run_seed}\x1f{purpose}\x1f{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def shown_test_index(run_seed: int, problem_identity: str, n_tests: int) -> int:
    """Which of a problem's `n_tests` tests the solver sees: seeded by the problem, recorded in the db."""
    if n_tests < 1:
        raise ValueError("a problem needs at least one test to show")
    return random.Random(derive_seed(run_seed, "shown_test", problem_identity)).randrange(n_tests)
