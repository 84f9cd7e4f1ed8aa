"""Split WER: decoding a dataset of pipeline batches into WER counts and reports."""

import json

import numpy as np
import pytest
import tensorflow as tf
from decoding_fakes import make_fake_model

from tfkd import metrics, split_wer
from tfkd.data.tokenizer import Tokenizer, train_sentencepiece
from tfkd.decoding import greedy_decode
from tfkd.features import LogMel

TEXTS = ["the cat sat", "a dog ran home", "the dog sat on the mat"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sentences = TEXTS + ["the cat ran", "a mat", "home on the range", "sat ran cat dog"] * 5
    path = train_sentencepiece(sentences, str(tmp_path_factory.mktemp("spm") / "sp"), 24)
    return Tokenizer(path)


def make_batches(tokenizer, with_text=True, batch_size=2):
    rng = np.random.default_rng(0)
    num_samples = np.array([2400, 4000, 3200], np.int32)
    waves = rng.uniform(-0.5, 0.5, size=(3, 4000)).astype(np.float32)
    waves *= np.arange(4000)[None, :] < num_samples[:, None]
    ids = [tokenizer.encode(t) for t in TEXTS]
    width = max(map(len, ids))
    token_ids = np.array([i + [0] * (width - len(i)) for i in ids], np.int32)
    data = {
        "waveform": waves,
        "num_samples": num_samples,
        "token_ids": token_ids,
        "label_length": np.array([len(i) for i in ids], np.int32),
        "utterance_id": np.array([b"u0", b"u1", b"u2"]),
    }
    if with_text:
        data["text"] = np.array([t.encode() for t in TEXTS])
    return list(tf.data.Dataset.from_tensor_slices(data).batch(batch_size).as_numpy_iterator())


def test_oracle_and_empty_decoders_give_zero_and_hundred(tokenizer):
    batches = make_batches(tokenizer, with_text=False)

    def oracle(waveform, num_samples):
        del waveform, num_samples
        batch = oracle.batches.pop(0)
        return batch["token_ids"], batch["label_length"]

    oracle.batches = list(batches)
    result = split_wer.evaluate_split(None, batches, tokenizer, decoder=oracle)
    assert (result["wer"], result["errors"], result["reference_words"]) == (0.0, 0, 13)
    assert result["utterances"] == 3 and result["decoder"] == "oracle"
    assert result["distinct_hypotheses"] == 3

    def empty(waveform, num_samples):
        return np.zeros([len(num_samples), 0], np.int32), np.zeros(len(num_samples), np.int32)

    result = split_wer.evaluate_split(None, batches, tokenizer, decoder=empty)
    assert (result["wer"], result["deletions"], result["substitutions"]) == (100.0, 13, 0)
    assert result["distinct_hypotheses"] == 1  # the same (empty) output for every utterance


def test_greedy_and_beam_match_a_manual_evaluation(tokenizer):
    frontend = LogMel(num_mel_bins=6)
    model = make_fake_model(vocab_size=tokenizer.vocab_size, num_features=6, seed=3)
    batches = make_batches(tokenizer)
    greedy = split_wer.evaluate_split(
        model, batches, tokenizer, frontend=frontend, max_symbols_per_frame=2, keep_hypotheses=True
    )
    # The same decoding by hand, one utterance at a time.
    hyps = []
    for batch in batches:
        for wave, n in zip(batch["waveform"], batch["num_samples"], strict=True):
            feats, lengths = frontend(wave[None, :n], np.array([n]))
            ids, lens, _ = greedy_decode(model, feats, lengths, max_symbols_per_frame=2)
            hyps.append(tokenizer.decode(ids.numpy()[0, : lens.numpy()[0]]))
    expected = metrics.corpus_errors(TEXTS, hyps)
    assert [d["hypothesis"] for d in greedy["utterances_detail"]] == hyps
    assert [d["utterance_id"] for d in greedy["utterances_detail"]] == ["u0", "u1", "u2"]
    assert {k: greedy[k] for k in expected.as_dict()} == expected.as_dict()
    assert greedy["wer"] > 0 and greedy["hypothesis_words"] > 0
    assert greedy["distinct_hypotheses"] == len(set(hyps))
    assert greedy["audio_seconds"] == pytest.approx(9600 / 16000)
    beam = split_wer.evaluate_split(
        model,
        make_batches(tokenizer, batch_size=3),
        tokenizer,
        decoder="beam",
        beam_width=1,
        frontend=frontend,
        max_symbols_per_frame=2,
    )
    assert {k: beam[k] for k in expected.as_dict()} == expected.as_dict()
    assert beam["decoder"] == "beam" and beam["beam_width"] == 1


def test_report_and_table(tmp_path):
    result = metrics.WordErrors(1, 2, 0, 10, 9, 3).as_dict()
    path = split_wer.write_report({**result, "decoder": "greedy"}, str(tmp_path), "dev")
    assert path == str(tmp_path / "eval" / "dev.json")
    with open(path) as f:
        loaded = json.load(f)
    assert loaded["split"] == "dev" and loaded["wer"] == pytest.approx(30.0)
    table = split_wer.format_table({"dev": {**result, "seconds": 12.34}, "test": result})
    lines = table.splitlines()
    assert lines[0].split() == ["split", "WER", "%", "sub", "del", "ins", "words", "utts", "secs"]
    assert lines[2].split() == ["dev", "30.00", "1", "2", "0", "10", "3", "12.3"]
    assert lines[3].startswith("test")


def test_unknown_decoder_raises():
    with pytest.raises(ValueError, match="decoder must be one of"):
        split_wer.make_decode_fn(None, None, decoder="viterbi")
