"""Controlled word-piece label noise for pseudo-labels (METHODS.md §7).

Each token of a hypothesis is, with probability `rate`, hit by one edit chosen uniformly among
substitution (by a different non-blank id), deletion, and insertion (of a random non-blank id after
it). The expected number of edits is `rate × tokens`, so the word-piece error rate of the
corrupted labels against the originals, measured by edit distance, is about `rate` (slightly less
when two edits happen to cancel, e.g. a deletion next to an insertion of the same id).

The random stream of a hypothesis depends only on `(seed, key, index)`, never on batch order, so
a resumed or re-sharded run corrupts every utterance the same way. Pure Python/NumPy, on the host.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

SUBSTITUTE, DELETE, INSERT = 0, 1, 2


def corrupt_tokens(
    tokens: Sequence[int], rate: float, rng: np.random.Generator, vocab_size: int, blank: int = 0
) -> list[int]:
    """One corrupted copy of `tokens` (see the module docstring).

    Args:
      tokens: label ids (no blank).
      rate: edit probability per token, in [0, 1].
      rng: NumPy random generator.
      vocab_size: V; substituted and inserted ids are drawn from [0, V) without `blank`.
      blank: the blank id, never produced.

    Returns:
      The corrupted label ids.

    Raises:
      ValueError: `rate` outside [0, 1] or fewer than two non-blank ids (no substitution exists).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if vocab_size - (0 <= blank < vocab_size) < 2:
        raise ValueError(f"label noise needs at least two non-blank ids, V = {vocab_size}")
    labels = np.array([k for k in range(vocab_size) if k != blank])
    out: list[int] = []
    for token in tokens:
        token = int(token)
        if rng.random() >= rate:
            out.append(token)
            continue
        op = rng.integers(3)
        if op == SUBSTITUTE:
            choices = labels[labels != token]
            out.append(int(rng.choice(choices)))
        elif op == INSERT:
            out.extend([token, int(rng.choice(labels))])
        # DELETE: append nothing.
    return out


def hypothesis_rng(seed: int, key: str, index: int) -> np.random.Generator:
    """The random stream of hypothesis `index` of utterance `key` under `seed`."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8")), int(index)])


def corrupt_nbest(
    hypotheses: Sequence[Sequence[int]],
    rate: float,
    vocab_size: int,
    seed: int,
    key: str,
    blank: int = 0,
) -> list[list[int]]:
    """Corrupts each hypothesis of one utterance independently and reproducibly.

    Args:
      hypotheses: N label-id sequences.
      rate, vocab_size, blank: as in `corrupt_tokens`.
      seed: experiment seed.
      key: utterance id (the random stream depends on it, not on the batch order).

    Returns:
      N corrupted label-id sequences.
    """
    return [
        corrupt_tokens(h, rate, hypothesis_rng(seed, key, n), vocab_size, blank)
        for n, h in enumerate(hypotheses)
    ]


def edit_distance(reference: Sequence[int], hypothesis: Sequence[int]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two id sequences."""
    ref, hyp = list(reference), list(hypothesis)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, h in enumerate(hyp, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return int(row[-1])
