"""Token accounting shared by the backends: per-request counts split over a request's n samples.

A completion's `prompt_tokens` is its share of the prompt, which was processed once for all `n`
samples (vLLM shares the prefix; an OpenAI-compatible server bills it once), so summing
`prompt_tokens` over a request's completions gives the prompt length exactly, and summing over a
run gives the tokens actually processed. `completion_tokens` is the sample's own count where the
backend knows it (vLLM, the built-in model) and a share of the server's total where it does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from generator.backends.base import FinishReason


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` as `parts` integers that differ by at most one and add up to `total`."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_completion_tokens(total: int, texts: Sequence[str], reasons: Sequence[FinishReason], max_tokens: int) -> list[int]:
    """Per-choice completion token counts that add up to the server's per-request `total`."""
    counts = [max_tokens if r == "length" else 0 for r in reasons]
    rest_idx = [i for i, r in enumerate(reasons) if r != "length"]
    if sum(counts) > total:  # the server counts differently from max_tokens: share everything by length
        counts, rest_idx = [0] * len(reasons), list(range(len(reasons)))
    rest = total - sum(counts)
    if not rest_idx:
        return counts
    weights = [len(texts[i]) for i in rest_idx]
    if sum(weights) == 0:
        shares = split_evenly(rest, len(rest_idx))
    else:
        exact = [rest * w / sum(weights) for w in weights]
        shares = [int(x) for x in exact]
        # largest remainders first, so the shares add up to `rest` exactly
        for i in sorted(range(len(exact)), key=lambda k: exact[k] - shares[k], reverse=True)[: rest - sum(shares)]:
            shares[i] += 1
    for i, share in zip(rest_idx, shares, strict=True):
        counts[i] = share
    return counts
