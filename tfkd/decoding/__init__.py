"""Transducer decoding: greedy, beam search with N-best, full-sum scoring of hypotheses."""

from tfkd.decoding.beam import NBest, beam_search, beam_search_encoded
from tfkd.decoding.greedy import greedy_decode, greedy_decode_encoded
from tfkd.decoding.scoring import score, score_encoded

__all__ = [
    "NBest",
    "beam_search",
    "beam_search_encoded",
    "greedy_decode",
    "greedy_decode_encoded",
    "score",
    "score_encoded",
]
