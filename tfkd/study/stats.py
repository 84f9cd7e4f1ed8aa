"""Summary statistics of runs: mean, 95 % confidence interval, the seeds a narrower interval
takes, paired per-seed differences, relative reduction, collapse."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Two-sided 95 % quantiles t_{0.975, df} of Student's t distribution, df = 1..30 (standard table
# values); beyond 30 the normal quantile is within 2 % and is used instead.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """`t_{0.975, df}`: the half-width factor of a two-sided 95 % interval."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """`(mean, half-width)` of the 95 % t-interval of the mean; half-width None for one value.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("mean_ci95 needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, t_quantile_975(n - 1) * sample_sd(values) / math.sqrt(n)


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n − 1 in the denominator); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seeds_for_half_width(sd: float, target: float, max_seeds: int = 30) -> int | None:
    """The fewest seeds `n >= 2` whose 95 % t-interval of the mean, `t_{0.975, n-1} · sd / √n`,
    is within `target` for values of standard deviation `sd`; None when more than `max_seeds`.

    An estimate for planning: `sd` is measured on the seeds run so far, and more seeds will
    measure another.

    Raises:
        ValueError: a negative `sd` or a `target` that is not positive.
    """
    if sd < 0 or target <= 0:
        raise ValueError(f"need sd >= 0 and target > 0, got {sd}, {target}")
    for n in range(2, max_seeds + 1):
        if t_quantile_975(n - 1) * sd / math.sqrt(n) <= target:
            return n
    return None


def relative_reduction(wer: float, baseline: float) -> float:
    """Relative WER reduction `(baseline − wer) / baseline` (positive = better than baseline)."""
    if baseline <= 0:
        raise ValueError(f"baseline WER must be positive, got {baseline}")
    return (baseline - wer) / baseline


# A model that gives fewer distinct transcripts than this fraction of the utterances has collapsed
# to a few stock outputs (near 90 % WER such a guess scores like a model that learned a little).
COLLAPSED_BELOW = 0.05


def collapsed(distinct: int | None, utterances: int | None) -> bool:
    """True when `distinct` transcripts for `utterances` utterances (`bin/evaluate`'s
    `distinct_hypotheses`, `utterances`) are fewer than `COLLAPSED_BELOW` of them; False when
    either is unknown."""
    return distinct is not None and bool(utterances) and distinct < COLLAPSED_BELOW * utterances


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict | None:
    """The mean per-seed difference `a[s] − b[s]` over the seeds both have, with its 95 %
    t-interval (`mean_ci95` of the differences).

    Pairing by seed removes what two runs of one seed share (for the study's students: the initial
    weights and the order of the data) from the spread, so a consistent difference is detected
    with fewer seeds than by comparing two independent means.

    Args:
        a, b: `{seed: value}` of two configurations (e.g. test WER of two methods).

    Returns:
        `{"mean", "ci95" (half-width; None with one common seed), "seeds" (sorted), "n"}`; None
        when no seed is common.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    mean, half = mean_ci95([a[s] - b[s] for s in seeds])
    return {"mean": mean, "ci95": half, "seeds": seeds, "n": len(seeds)}


def paired_verdict(diff: Mapping | None, a: str = "A", b: str = "B") -> str:
    """What a `paired_difference` of error rates (lower is better) says: `"<a> better"` or
    `"<b> better"` when its 95 % interval excludes 0, else `"no separation"`;
    `"one seed: no interval"` with one common seed, `"no common seed"` for None."""
    if diff is None:
        return "no common seed"
    if diff["ci95"] is None:
        return "one seed: no interval"
    if diff["mean"] + diff["ci95"] < 0:
        return f"{a} better"
    if diff["mean"] - diff["ci95"] > 0:
        return f"{b} better"
    return "no separation"
