"""Word error rate through `jiwer`: per utterance, per corpus, and streamed over batches.

Texts are compared as whitespace-separated words after jiwer's default clean-up
(surrounding and repeated spaces removed); no case or punctuation folding, so
references and hypotheses must come from the same text normalisation.
"""

import dataclasses

import jiwer


@dataclasses.dataclass(frozen=True)
class WordErrors:
    """Edit counts of one or more utterances against their references."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_words: int = 0
    hypothesis_words: int = 0
    utterances: int = 0

    @property
    def errors(self):
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self):
        """WER in percent; 0 for no words and no errors, inf for errors on no reference words."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.reference_words

    def __add__(self, other):
        return WordErrors(*(a + b for a, b in zip(_counts(self), _counts(other), strict=True)))

    def as_dict(self):
        """Counts plus `wer` (percent), JSON-ready."""
        return {**dataclasses.asdict(self), "errors": self.errors, "wer": self.wer}


def _counts(errors):
    return [getattr(errors, f.name) for f in dataclasses.fields(errors)]


def utterance_errors(references, hypotheses):
    """Per-utterance edit counts.

    Args:
      references: list of reference strings.
      hypotheses: list of hypothesis strings, same length.

    Returns:
      list of `WordErrors`, one per utterance.
    """
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return []
    out = jiwer.process_words(references, hypotheses)
    result = []
    for ref_words, hyp_words, chunks in zip(
        out.references, out.hypotheses, out.alignments, strict=True
    ):
        counts = {"substitute": 0, "delete": 0, "insert": 0}
        for chunk in chunks:
            if chunk.type == "insert":
                counts["insert"] += chunk.hyp_end_idx - chunk.hyp_start_idx
            elif chunk.type in counts:
                counts[chunk.type] += chunk.ref_end_idx - chunk.ref_start_idx
        result.append(
            WordErrors(
                substitutions=counts["substitute"],
                deletions=counts["delete"],
                insertions=counts["insert"],
                reference_words=len(ref_words),
                hypothesis_words=len(hyp_words),
                utterances=1,
            )
        )
    return result


def corpus_errors(references, hypotheses):
    """Summed `WordErrors` over a corpus (WER = total errors / total reference words)."""
    return sum(utterance_errors(references, hypotheses), WordErrors())


class WerAccumulator:
    """Streams WER over batches: `update` per batch, `result` at the end."""

    def __init__(self):
        self.reset()

    def reset(self):
        self._total = WordErrors()

    def update(self, references, hypotheses):
        """Adds a batch; returns its per-utterance `WordErrors`."""
        per_utterance = utterance_errors(references, hypotheses)
        self._total = sum(per_utterance, self._total)
        return per_utterance

    def result(self):
        """Totals so far as `WordErrors` (`.wer` in percent, `.as_dict()` for JSON)."""
        return self._total
