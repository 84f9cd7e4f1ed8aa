import pathlib
import runpy

import numpy as np
import pytest
import tensorflow as tf

from tfkd import features
from tfkd.data import pipeline, reading, records

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"

# 24 utterances over three files: lengths 0.1–1.0 s, 1–12 tokens.
NUM_FILES, PER_FILE = 3, 8


def _utterances(seed=0, n=NUM_FILES * PER_FILE, nbest=False):
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n):
        num = int(rng.integers(1600, 16001))
        hyps = [list(rng.integers(1, 50, size=int(k))) for k in rng.integers(0, 6, size=1 + i % 3)]
        utts.append(
            records.Utterance(
                utterance_id=f"1-2-{i:04d}",
                speaker_id="1",
                text=f"utterance {i}",
                pcm16=rng.integers(-32768, 32768, size=num, dtype=np.int16),
                token_ids=list(rng.integers(1, 50, size=int(rng.integers(1, 13)))),
                nbest_token_ids=hyps if nbest else None,
                nbest_teacher_scores=list(-rng.random(len(hyps)) * 10) if nbest else None,
            )
        )
    return utts


def _write(path, utts, raw=()):
    """Writes `utts` (and raw byte records at the given positions) to one file."""
    raw = dict(raw)
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, u in enumerate(utts):
            if i in raw:
                w.write(raw[i])
            w.write(records.serialize_utterance(u))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    utts = _utterances()
    for f in range(NUM_FILES):
        _write(root / f"train-{f:05d}.tfrecord", utts[f * PER_FILE : (f + 1) * PER_FILE])
    return str(root / "train-*.tfrecord"), {u.utterance_id: u for u in utts}


def _ids(ds):
    return [uid.decode() for b in ds for uid in b["utterance_id"].numpy()]


def test_round_trip_audio_to_batch_is_sample_exact(corpus):
    pattern, by_id = corpus
    ds = pipeline.make_dataset(pattern, global_batch_size=5, with_text=True, deterministic=True)
    seen = 0
    for batch in ds:
        batch = {k: v.numpy() for k, v in batch.items()}
        wave, tokens = batch["waveform"], batch["token_ids"]
        assert wave.shape[1] == batch["num_samples"].max()
        for row, uid in enumerate(batch["utterance_id"]):
            utt = by_id[uid.decode()]
            n, u = len(utt.pcm16), len(utt.token_ids)
            assert batch["num_samples"][row] == n and batch["label_length"][row] == u
            pcm = np.round(wave[row, :n] * 32768).astype(np.int16)
            np.testing.assert_array_equal(pcm, utt.pcm16)
            assert not wave[row, n:].any()
            assert tokens[row, :u].tolist() == list(utt.token_ids)
            assert not tokens[row, u:].any()
            assert batch["text"][row].decode() == utt.text
            seen += 1
    assert seen == len(by_id)


def test_filters_by_duration_and_label_length(corpus):
    pattern, by_id = corpus
    ds = pipeline.make_dataset(
        pattern, global_batch_size=4, max_duration_s=0.5, max_label_length=6, with_text=True
    )
    expected = {k for k, u in by_id.items() if len(u.pcm16) <= 8000 and len(u.token_ids) <= 6}
    assert 0 < len(expected) < len(by_id)
    assert sorted(_ids(ds)) == sorted(expected)


def test_dynamic_buckets_group_by_length(corpus):
    pattern, by_id = corpus
    ds = pipeline.make_dataset(
        pattern, global_batch_size=3, bucket_boundaries=[0.4, 0.7], with_text=True
    )
    total = 0
    for batch in ds:
        n = batch["num_samples"].numpy()
        buckets = np.searchsorted([6400, 11200], n, side="right")
        assert len(set(buckets)) == 1  # one bucket per batch
        assert batch["waveform"].shape[1] == n.max()
        assert batch["token_ids"].shape[1] == batch["label_length"].numpy().max()
        total += len(n)
    assert total == len(by_id)


def test_static_buckets_have_fixed_shapes_and_drop_remainder(corpus):
    pattern, by_id = corpus
    ds = pipeline.make_dataset(
        pattern,
        global_batch_size=3,
        bucket_boundaries=[0.4, 0.7],
        static_shapes=True,
        max_duration_s=1.0,
        max_label_length=12,
    )
    assert ds.element_spec["waveform"].shape.as_list() == [3, None]
    assert ds.element_spec["token_ids"].shape.as_list() == [3, 12]
    edges = [6400, 11200, 16000]
    per_bucket = np.bincount(
        [np.searchsorted(edges, len(u.pcm16)) for u in by_id.values()], minlength=3
    )
    batches = list(ds)
    assert len(batches) == sum(per_bucket // 3)
    for batch in batches:
        width = batch["waveform"].shape[1]
        assert width in edges
        lower = ([0] + edges)[edges.index(width)]
        assert ((batch["num_samples"] > lower) & (batch["num_samples"] <= width)).numpy().all()


def test_static_shapes_need_limits(corpus):
    pattern, _ = corpus
    with pytest.raises(ValueError, match="max_duration_s and max_label_length"):
        pipeline.make_dataset(pattern, global_batch_size=2, static_shapes=True)
    with pytest.raises(ValueError, match="below max_duration_s"):
        pipeline.make_dataset(
            pattern,
            global_batch_size=2,
            static_shapes=True,
            max_duration_s=1.0,
            max_label_length=5,
            bucket_boundaries=[1.0],
        )
    with pytest.raises(FileNotFoundError):
        pipeline.make_dataset(pattern + ".missing", global_batch_size=2)


def test_seeded_shuffle_is_deterministic(corpus):
    pattern, by_id = corpus
    order = lambda seed: _ids(
        pipeline.make_dataset(
            pattern,
            global_batch_size=4,
            shuffle=True,
            seed=seed,
            shuffle_buffer_size=8,
            deterministic=True,
            with_text=True,
        )
    )
    first = order(7)
    assert first == order(7)
    assert first != order(8)
    assert sorted(first) == sorted(by_id)
    assert first != sorted(first)


def test_repeat_gives_each_epoch_in_full(corpus):
    pattern, by_id = corpus
    ids = _ids(pipeline.make_dataset(pattern, global_batch_size=4, repeat=2, with_text=True))
    assert sorted(ids) == sorted(list(by_id) * 2)


@pytest.mark.parametrize("num_files", [3, 1])
def test_input_context_shards_and_splits_the_batch(tmp_path, num_files):
    utts = _utterances(seed=1, n=12)
    for f in range(num_files):
        _write(tmp_path / f"s{f}.tfrecord", utts[f::num_files])
    ids = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 4)
        ds = pipeline.make_dataset(
            str(tmp_path / "*.tfrecord"), global_batch_size=8, input_context=context, with_text=True
        )
        sizes = [b["num_samples"].shape[0] for b in ds]
        assert max(sizes) == 2  # per-replica batch = 8 / 4 replicas
        ids.append(_ids(ds))
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(u.utterance_id for u in utts)


def test_nbest_fields_batch_with_padding(tmp_path):
    utts = _utterances(seed=2, n=6, nbest=True)
    path = _write(tmp_path / "nbest.tfrecord", utts)
    (batch,) = pipeline.make_dataset(
        path, global_batch_size=6, with_nbest=True, with_text=True, deterministic=True
    )
    h_max = max(len(u.nbest_token_ids) for u in utts)
    u_max = max(len(h) for u in utts for h in u.nbest_token_ids)
    assert batch["nbest_token_ids"].shape == (6, h_max, u_max)
    for row, uid in enumerate(batch["utterance_id"].numpy()):
        utt = utts[int(uid.decode()[-4:])]
        h = len(utt.nbest_token_ids)
        assert batch["nbest_count"][row] == h
        for k, hyp in enumerate(utt.nbest_token_ids):
            assert batch["nbest_lengths"][row, k] == len(hyp)
            assert batch["nbest_token_ids"][row, k, : len(hyp)].numpy().tolist() == hyp
        np.testing.assert_allclose(
            batch["teacher_scores"][row, :h], utt.nbest_teacher_scores, rtol=1e-6
        )
        assert (batch["teacher_scores"][row, h:].numpy() == pipeline.NBEST_PAD_SCORE).all()
        assert not batch["nbest_lengths"][row, h:].numpy().any()

    static = pipeline.make_dataset(
        path,
        global_batch_size=2,
        with_nbest=True,
        static_shapes=True,
        max_duration_s=1.0,
        max_label_length=12,
        nbest_size=2,
    )
    batches = list(static)
    assert len(batches) == 3
    for b in batches:
        assert b["nbest_token_ids"].shape == (2, 2, 12)
        assert (b["nbest_count"].numpy() <= 2).all()


def test_corrupt_record_error_names_the_file(tmp_path):
    utts = _utterances(seed=3, n=4)
    _write(tmp_path / "a-good.tfrecord", utts[:2])
    bad = _write(tmp_path / "b-bad.tfrecord", utts[2:], raw={1: b"not an Example"})
    pattern = str(tmp_path / "*.tfrecord")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record\] \[1\] \[of\] \[.*b-bad"):
        list(pipeline.make_dataset(pattern, global_batch_size=2))

    counter = reading.BadRecordCounter()
    ds = pipeline.make_dataset(
        pattern,
        global_batch_size=2,
        skip_bad_records=True,
        bad_record_counter=counter,
        with_text=True,
        deterministic=True,
    )
    assert sorted(_ids(ds)) == sorted(u.utterance_id for u in utts)
    assert counter.count() == 1
    assert bad.endswith("b-bad.tfrecord")


def test_truncated_file_error_names_the_file_and_skip_counts(tmp_path):
    utts = _utterances(seed=4, n=5)
    path = _write(tmp_path / "cut.tfrecord", utts)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-100])  # the last record loses its tail
    with pytest.raises(tf.errors.InvalidArgumentError, match="cut.tfrecord.*corrupt or truncated"):
        list(pipeline.make_dataset(path, global_batch_size=2))
    counter = reading.BadRecordCounter()
    ds = pipeline.make_dataset(
        path, global_batch_size=2, skip_bad_records=True, bad_record_counter=counter, with_text=True
    )
    assert sorted(_ids(ds)) == [u.utterance_id for u in utts[:4]]
    assert counter.count() == 1


def test_record_with_wrong_sample_rate_is_a_bad_record(tmp_path):
    utts = _utterances(seed=5, n=3)
    utts[1].sample_rate = 8000
    path = _write(tmp_path / "rate.tfrecord", utts)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[1\] \[of\] \[.*rate.tfrecord"):
        list(pipeline.make_dataset(path, global_batch_size=3))
    counter = reading.BadRecordCounter()
    ds = pipeline.make_dataset(
        path, global_batch_size=3, skip_bad_records=True, bad_record_counter=counter, with_text=True
    )
    assert sorted(_ids(ds)) == [utts[0].utterance_id, utts[2].utterance_id]
    assert counter.count() == 1


def test_feature_stats_match_direct_computation_and_tool(corpus, tmp_path):
    pattern, by_id = corpus
    stats = pipeline.compute_feature_stats(pattern, batch_size=8)
    log_mel = features.LogMel()
    frames = np.concatenate(
        [
            log_mel((u.pcm16 / 32768.0).astype(np.float32)[None])[0].numpy()[0]
            for u in by_id.values()
        ]
    )
    assert stats["num_frames"] == len(frames)
    np.testing.assert_allclose(stats["mean"], frames.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["stddev"], frames.std(0), rtol=1e-3, atol=1e-4)

    out = str(tmp_path / "stats.json")
    tool = runpy.run_path(str(TOOLS / "compute_feature_stats.py"))
    assert tool["main"]([pattern, out, "--batch_size", "5"]) == 0
    layer = features.LogMel.from_stats_file(out)
    np.testing.assert_allclose(layer.mean, stats["mean"], rtol=1e-5)
    np.testing.assert_allclose(layer.stddev, stats["stddev"], rtol=1e-5)
