import numpy as np
import pytest
import tensorflow as tf

from tfkd.data import tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "and god said let there be light and there was light",
    "a big cat sat on the mat",
    "in the beginning was the word",
    "she sells sea shells by the sea shore",
    "the lord is my shepherd i shall not want",
] * 10


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("spm") / "sub" / "spm")
    path = tokenizer.train_sentencepiece(CORPUS, prefix, vocab_size=48)
    return tokenizer.Tokenizer(path)


def test_special_ids_and_vocab(tok):
    assert tok.pieces[0] == "<blank>"
    assert tok.pieces[1] == "<unk>"
    assert tok.vocab_size == len(tok.pieces)
    assert tok.vocab_size == 48
    assert len(set(tok.pieces)) == tok.vocab_size


def test_training_is_deterministic(tok, tmp_path):
    again = tokenizer.Tokenizer(tokenizer.train_sentencepiece(CORPUS, str(tmp_path / "b"), 48))
    assert again.pieces == tok.pieces
    ids = tok.encode("the quick brown fox")
    assert [tok.pieces[i] for i in ids[:3]] == ["\u2581the", "\u2581", "q"]
    assert again.encode("the quick brown fox") == ids


def test_tiny_corpus_gets_fewer_pieces_instead_of_failing(tmp_path):
    # hard_vocab_limit=False: a corpus too small for the request yields a smaller vocabulary.
    path = tokenizer.train_sentencepiece(["ab ba ab"], str(tmp_path / "t"), vocab_size=100)
    small = tokenizer.Tokenizer(path)
    assert 3 <= small.vocab_size < 100
    assert small.decode(small.encode("ba ab")) == "ba ab"


def test_round_trip_and_blank_never_produced(tok):
    for text in CORPUS[:6] + ["the fox sat", "light"]:
        ids = tok.encode(text)
        assert ids and 0 not in ids
        assert all(1 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # Blank and extra whitespace are ignored on the way back.
    ids = tok.encode("the fox")
    assert tok.decode([0] + ids[:1] + [0, 0] + ids[1:] + [0]) == "the fox"
    assert tok.encode("  the   fox ") == ids


def test_unknown_characters_map_to_unk(tok):
    ids = tok.encode("the zq fox")  # every character here occurs in CORPUS
    assert 1 not in ids
    ids = tok.encode("the 7 fox")
    assert 1 in ids and 0 not in ids
    assert tok.decode(ids) == "the \u2047 fox"


def test_decode_rejects_out_of_range(tok):
    with pytest.raises(ValueError, match="outside"):
        tok.decode([3, tok.vocab_size])


def test_bpe_and_bad_arguments(tmp_path):
    path = tokenizer.train_sentencepiece(CORPUS, str(tmp_path / "bpe"), 40, model_type="bpe")
    bpe = tokenizer.Tokenizer(path)
    assert bpe.pieces[:2] == ["<blank>", "<unk>"]
    assert bpe.decode(bpe.encode(CORPUS[1])) == CORPUS[1]
    assert (tmp_path / "bpe.vocab").read_text().splitlines()[0].startswith("<blank>\t")
    with pytest.raises(ValueError, match="model_type"):
        tokenizer.train_sentencepiece(CORPUS, str(tmp_path / "x"), 40, model_type="word")
    with pytest.raises(ValueError, match="non-empty"):
        tokenizer.train_sentencepiece(["", "  "], str(tmp_path / "x"), 40)


def _batch(tok, texts):
    seqs = [tok.encode(t) for t in texts]
    width = max(len(s) for s in seqs) + 2
    # Pad with a nonzero id beyond the length so that the lengths mask is what drops it.
    ids = np.full((len(seqs), width), 5, np.int32)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
    return ids, np.array([len(s) for s in seqs], np.int32)


TEXTS = ["the quick brown fox", "light", "she sells 7 shells", "a"]


def test_in_graph_decode_equals_python(tok):
    ids, lengths = _batch(tok, TEXTS)
    layer = tok.ids_to_text_layer()
    expected = [tok.decode(s[:n]) for s, n in zip(ids, lengths, strict=True)]
    assert expected == ["the quick brown fox", "light", "she sells \u2047 shells", "a"]
    eager = [t.decode() for t in layer(ids, lengths).numpy()]
    assert eager == expected

    # Blanks and out-of-range ids are dropped; without lengths every position counts.
    noisy = np.where(np.arange(ids.shape[1])[None, :] < lengths[:, None], ids, 0)
    noisy = np.concatenate([np.zeros_like(noisy[:, :1]), noisy], axis=1)
    noisy[0, -1] = 10_000
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, None], tf.int32)])
    assert [t.decode() for t in fn(noisy).numpy()] == expected


class _Decoder(tf.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None], tf.int64)]
    )
    def __call__(self, ids, lengths):
        return {"text": self.layer(ids, lengths)}


def test_in_graph_decode_survives_saved_model(tok, tmp_path):
    ids, lengths = _batch(tok, TEXTS)
    expected = [tok.decode(s[:n]) for s, n in zip(ids, lengths, strict=True)]
    module = _Decoder(tok.ids_to_text_layer())
    export_dir = str(tmp_path / "saved")
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.__call__})
    del module
    loaded = tf.saved_model.load(export_dir)
    out = loaded.signatures["serving_default"](
        ids=tf.constant(ids, tf.int64), lengths=tf.constant(lengths, tf.int64)
    )["text"]
    assert [t.decode() for t in out.numpy()] == expected
    out = loaded(tf.constant(ids[1:2], tf.int64), tf.constant(lengths[1:2], tf.int64))["text"]
    assert [t.decode() for t in out.numpy()] == expected[1:2]


def test_in_graph_decode_in_keras_export_archive(tok, tmp_path):
    import keras

    layer = tok.ids_to_text_layer()
    archive = keras.export.ExportArchive()
    archive.track(layer)
    archive.add_endpoint(
        "decode",
        lambda ids, lengths: layer(ids, lengths),
        input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)],
    )
    archive.write_out(str(tmp_path / "archive"))
    ids, lengths = _batch(tok, TEXTS)
    out = tf.saved_model.load(str(tmp_path / "archive")).decode(ids, lengths)
    assert [t.decode() for t in out.numpy()] == [
        tok.decode(s[:n]) for s, n in zip(ids, lengths, strict=True)
    ]


def test_layer_config_round_trip(tok):
    layer = tok.ids_to_text_layer(name="detok")
    clone = tokenizer.IdsToText.from_config(layer.get_config())
    ids, lengths = _batch(tok, TEXTS[:2])
    assert clone(ids, lengths).numpy().tolist() == layer(ids, lengths).numpy().tolist()


def test_tokenizer_rejects_model_without_blank(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(tmp_path / "plain"),
        vocab_size=40,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="blank"):
        tokenizer.Tokenizer(str(tmp_path / "plain.model"))
