import collections

import pytest

from tfkd.data import text_pool as tp


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World! It's fine.", "hello world it's fine"),
        ("a well-known fact about cats", "a well known fact about cats"),
        ("Caf\u00e9 au lait is tasty", "cafe au lait is tasty"),
        ("don\u2019t stop me now", "don't stop me now"),
        ("'Tis the season, they said", "tis the season they said"),
        ("And God said, Let there be light: and there was light.",
         "and god said let there be light and there was light"),
        ("  several   spaces\tand a tab  ", "several spaces and a tab"),
        ("he paid 5 dollars for it", None),  # digits
        ("rock & roll is here to stay", None),  # symbol
        ("the price rose 10% today", None),
        ("Mr. Smith went home today", None),  # abbreviation read differently
        ("e.g. the cat sat down", None),
        ("the letter x is odd", None),  # spelled-out letter
        ("hmm that was quite good", None),  # word without a vowel
        ("three words only", None),
        (" ".join(["word"] * 20), " ".join(["word"] * 20)),
        (" ".join(["word"] * 21), None),
    ],
)  # fmt: skip
def test_normalize(raw, expected):
    assert tp.normalize(raw) == expected


def _pool(texts):
    return [tp.Sentence(t, "kjv") for t in texts]


def test_vocab_limit_keeps_only_sentences_of_top_words():
    pool = _pool(
        [
            "the cat sat on the mat",  # the x2
            "the dog sat on the log",
            "a cat and a dog sat",
            "the the the sat",
        ]
    )
    counts = tp.word_counts(pool)
    assert counts["the"] == 7 and counts["sat"] == 4
    # Top 2: the (7), sat (4).
    assert tp.top_words(pool, 2) == {"the", "sat"}
    assert [s.text for s in tp.apply_vocab_limit(pool, 2)] == ["the the the sat"]
    # a, cat, dog and on tie at 2: ties are broken alphabetically, so "on" misses the top 5.
    assert tp.top_words(pool, 5) == {"the", "sat", "a", "cat", "dog"}
    assert [s.text for s in tp.apply_vocab_limit(pool, 5)] == ["the the the sat"]
    # Top 8 adds on, and, log (not mat): every sentence but the "mat" one survives.
    assert [s.text for s in tp.apply_vocab_limit(pool, 8)] == [
        "the dog sat on the log",
        "a cat and a dog sat",
        "the the the sat",
    ]
    assert len(tp.apply_vocab_limit(pool, 100)) == 4
    with pytest.raises(ValueError):
        tp.apply_vocab_limit(pool, 0)


def test_deduplicate_normalises_sorts_and_keeps_first_source():
    pairs = [
        ("The dog ran far away.", "wordnet"),
        ("the dog ran far away", "kjv"),
        ("An apple a day, they say", "kjv"),
        ("Too short", "kjv"),
    ]
    assert tp.deduplicate(pairs) == [
        tp.Sentence("an apple a day they say", "kjv"),
        tp.Sentence("the dog ran far away", "wordnet"),
    ]


def test_wordnet_examples_reads_quoted_parts_of_glosses(tmp_path):
    (tmp_path / "data.noun").write_text(
        '  1 This "licence" header line is skipped\n'
        "00001 03 n 01 dog 0 000 | a domestic animal; "
        '"the dog barked all night"; "dogs chase cats"\n'
        "00002 03 n 01 cat 0 000 | a small animal\n"
    )
    assert tp.wordnet_examples(str(tmp_path)) == ["the dog barked all night", "dogs chase cats"]
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        tp.wordnet_examples(str(tmp_path / "missing"))


def test_kjv_clauses_split_at_punctuation():
    verses = ["In the beginning God created the heaven and the earth.",
              "And God said, Let there be light: and there was light."]  # fmt: skip
    assert tp.kjv_clauses(verses) == [
        "In the beginning God created the heaven and the earth",
        "And God said",
        " Let there be light",
        " and there was light",
    ]


def test_kjv_verses_from_debian_package():
    verses = tp.kjv_verses()
    assert len(verses) == 31102
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert verses[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."


def test_real_pool_with_1000_word_limit():
    pool = tp.build_pool(vocab_limit=1000)
    assert 30000 < len(pool) < 40000
    assert pool == sorted(pool, key=lambda s: s.text)
    assert len({s.text for s in pool}) == len(pool)
    assert len(tp.word_counts(pool)) <= 1000
    sources = collections.Counter(s.source for s in pool)
    assert 0.01 < sources["wordnet"] / len(pool) < 0.06  # KJV dominates common words
    for s in pool[:: len(pool) // 50]:
        assert tp.normalize(s.text) == s.text


def test_check_sources_names_the_missing_package(tmp_path):
    tp.check_sources()  # both sources are installed on a set-up machine
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        tp.check_sources(str(tmp_path))
