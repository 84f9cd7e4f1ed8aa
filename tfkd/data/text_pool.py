"""Sentence pool for the synthetic corpus: WordNet examples and King James Bible clauses.

Both sources ship in Debian's main archive under permissive terms: WordNet's example sentences
(`wordnet-base`, Princeton WordNet licence) and the KJV text (`bible-kjv-text`, public domain;
read through the `bible` program of `bible-kjv`, since the data file is compressed).
"""

import collections
import dataclasses
import functools
import glob
import os
import re
import shutil
import subprocess
import unicodedata

WORDNET_DIR = "/usr/share/wordnet"
MIN_WORDS = 4
MAX_WORDS = 20

# A sentence with any of these abbreviations would be read aloud as a different word than its
# transcript ("mr" -> "mister"), so such sentences are dropped instead of normalised.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc prof capt col gen lt sgt rev hon co inc ltd esp ie eg".split()
)
# Characters removed silently: punctuation that only marks prosody.
_PUNCT = re.compile(r"[.,;:!?\"()\[\]`]")
# Characters that turn into a word boundary.
_BREAKS = re.compile(r"[-\u2010-\u2015/]")
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
_VOWEL = re.compile(r"[aeiouy]")


def normalize(text: str) -> str | None:
    """Normalises one sentence for transcripts and synthesis.

    Lower case, ASCII letters and word-internal apostrophes only, single spaces, 4-20 words.

    Args:
      text: raw sentence.

    Returns:
      The normalised sentence, or None when it cannot be read back faithfully: it holds digits,
      symbols (``& % $ @ ...``), abbreviations, spelled-out letters or words without a vowel, or
      its length is outside 4-20 words.
    """
    if not text.isascii():  # fold accents (cafe) and typographic apostrophes
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    if re.search(r"\d", text) or re.search(r"[a-z]\.[a-z]", text):
        return None  # digits and dotted abbreviations (e.g. u.s.) have no single reading
    if any(w.rstrip(".") in _ABBREVIATIONS for w in text.split() if w.endswith(".")):
        return None
    text = _BREAKS.sub(" ", _PUNCT.sub(" ", text))
    words = []
    for word in text.split():
        word = word.strip("'")
        if not word:
            continue
        if not _WORD.match(word):
            return None  # a symbol that TTS would read as a word or skip
        if len(word) == 1 and word not in ("a", "i", "o"):
            return None  # single letters get spelled out
        if not _VOWEL.search(word) or word in _ABBREVIATIONS:
            return None
        words.append(word)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    return " ".join(words)


def check_sources(wordnet_dir: str = WORDNET_DIR) -> None:
    """Raises FileNotFoundError naming the Debian packages if a text source is missing."""
    if not glob.glob(os.path.join(wordnet_dir, "data.*")):
        raise FileNotFoundError(f"No WordNet data.* files in {wordnet_dir} (Debian: wordnet-base)")
    if shutil.which("bible") is None or not os.path.exists("/usr/lib/bible.data"):
        raise FileNotFoundError("No KJV text (Debian: bible-kjv and bible-kjv-text)")


def wordnet_examples(wordnet_dir: str = WORDNET_DIR) -> list[str]:
    """Returns WordNet's raw example sentences (the quoted parts of glosses), in file order.

    Raises:
      FileNotFoundError: when `wordnet-base` is not installed.
    """
    paths = sorted(glob.glob(os.path.join(wordnet_dir, "data.*")))
    if not paths:
        raise FileNotFoundError(
            f"No WordNet data.* files in {wordnet_dir}; install the Debian package wordnet-base "
            "(bash tools/install_system_deps.sh)."
        )
    examples = []
    for path in paths:
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header lines
                    continue
                _, sep, gloss = line.partition(" | ")
                if sep:
                    examples.extend(re.findall(r'"([^"]+)"', gloss))
    return examples


def kjv_verses() -> list[str]:
    """Returns the 31,102 KJV verses, Genesis 1:1 to Revelation 22:21, without numbers.

    Raises:
      FileNotFoundError: when the `bible` reader (Debian `bible-kjv`) is missing.
    """
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(
            "The KJV reader `bible` is missing; install the Debian packages bible-kjv and "
            "bible-kjv-text (bash tools/install_system_deps.sh)."
        )
    out = subprocess.run(
        [exe, "-l0", "gen1:1-rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    return [m.group(1) for m in re.finditer(r"^ +\d+ (.+)$", out, flags=re.MULTILINE)]


def kjv_clauses(verses: list[str] | None = None) -> list[str]:
    """Splits KJV verses into clauses at punctuation (``. , ; : ? !``)."""
    verses = kjv_verses() if verses is None else verses
    return [c for v in verses for c in re.split(r"[.,;:?!]", v) if c.strip()]


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One normalised sentence and the source it came from ("wordnet" or "kjv")."""

    text: str
    source: str


def word_counts(sentences: list[Sentence]) -> collections.Counter:
    """Counts word occurrences over the pool."""
    return collections.Counter(w for s in sentences for w in s.text.split())


def top_words(sentences: list[Sentence], k: int) -> set[str]:
    """The `k` most frequent words; ties are broken alphabetically so the set is reproducible."""
    ranked = sorted(word_counts(sentences).items(), key=lambda kv: (-kv[1], kv[0]))
    return {w for w, _ in ranked[:k]}


def apply_vocab_limit(sentences: list[Sentence], k: int) -> list[Sentence]:
    """Keeps only sentences whose words are all among the `k` most frequent words of the pool."""
    if k <= 0:
        raise ValueError(f"vocab_limit must be positive, got {k}")
    vocab = top_words(sentences, k)
    return [s for s in sentences if all(w in vocab for w in s.text.split())]


def deduplicate(pairs: list[tuple[str, str]]) -> list[Sentence]:
    """Normalises (raw text, source) pairs and keeps the first occurrence of each sentence.

    Returns:
      Sentences sorted by text, so the pool does not depend on reading order.
    """
    seen = {}
    for raw, source in pairs:
        text = normalize(raw)
        if text is not None and text not in seen:
            seen[text] = source
    return [Sentence(t, seen[t]) for t in sorted(seen)]


def build_pool(
    sources: tuple[str, ...] = ("wordnet", "kjv"),
    vocab_limit: int | None = None,
    wordnet_dir: str = WORDNET_DIR,
) -> list[Sentence]:
    """Builds the normalised, deduplicated sentence pool (cached per process).

    Args:
      sources: any of "wordnet" and "kjv".
      vocab_limit: if set, keep only sentences made of the `vocab_limit` most frequent words.
      wordnet_dir: where WordNet's data.* files are.

    Returns:
      Sentences sorted by text.
    """
    return list(_cached_pool(tuple(sources), vocab_limit, wordnet_dir))


@functools.lru_cache(maxsize=4)
def _cached_pool(sources: tuple, vocab_limit: int | None, wordnet_dir: str) -> tuple:
    pairs = []
    for source in sources:
        if source == "wordnet":
            pairs += [(t, "wordnet") for t in wordnet_examples(wordnet_dir)]
        elif source == "kjv":
            pairs += [(t, "kjv") for t in kjv_clauses()]
        else:
            raise ValueError(f"Unknown text source {source!r}; use 'wordnet' or 'kjv'.")
    pool = deduplicate(pairs)
    return tuple(pool if vocab_limit is None else apply_vocab_limit(pool, vocab_limit))
