"""Pseudo-labelling (tfkd.pseudo_label) and controlled label noise (tfkd.label_noise)."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from training_records import write_tiny_records

from tfkd import decoding, features, label_noise, metrics, models, pseudo_label
from tfkd.data import records

VOCAB = 8
NUM_MEL = 16
SETTINGS = pseudo_label.Settings(beam_width=4, nbest=3, teacher="random-init")


def tokens_text(ids):
    """The tiny records' text is their token ids joined by spaces."""
    return " ".join(str(int(i)) for i in ids)


def levenshtein(a, b):
    """Independent of label_noise.edit_distance: jiwer through tfkd.metrics on id strings."""
    e = metrics.utterance_errors([tokens_text(a)], [tokens_text(b)])[0]
    return e.errors


# ----------------------------------------------------------------------------------------------
# label noise


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_corruption_rate_measured_by_edit_distance(rate):
    rng = np.random.default_rng(0)
    hyps = [rng.integers(1, 50, size=12).tolist() for _ in range(500)]  # 6000 tokens
    noisy = [label_noise.corrupt_tokens(h, rate, rng, vocab_size=50) for h in hyps]
    measured = sum(levenshtein(h, n) for h, n in zip(hyps, noisy, strict=True)) / 6000
    assert abs(measured - rate) < 0.02, measured
    assert sum(label_noise.edit_distance(h, n) for h, n in zip(hyps, noisy, strict=True)) == (
        round(measured * 6000)
    )
    lengths = np.array([len(n) for n in noisy])
    assert 0 < np.sum(lengths < 12) and 0 < np.sum(lengths > 12)  # deletions and insertions


def test_corruption_never_produces_blank():
    rng = np.random.default_rng(1)
    for blank in (0, 2):
        ids = [k for k in range(3) if k != blank]
        for _ in range(200):
            noisy = label_noise.corrupt_tokens(rng.choice(ids, size=5), 1.0, rng, 3, blank=blank)
            assert blank not in noisy


def test_corruption_is_seeded_per_utterance():
    hyps = [[1, 2, 3, 4, 5, 6, 7]] * 3
    a = label_noise.corrupt_nbest(hyps, 0.5, VOCAB, seed=3, key="utt-1")
    assert a == label_noise.corrupt_nbest(hyps, 0.5, VOCAB, seed=3, key="utt-1")
    assert a != label_noise.corrupt_nbest(hyps, 0.5, VOCAB, seed=4, key="utt-1")
    assert a != label_noise.corrupt_nbest(hyps, 0.5, VOCAB, seed=3, key="utt-2")
    assert len({tuple(h) for h in a}) > 1  # hypotheses of one utterance get different noise
    assert label_noise.corrupt_nbest(hyps, 0.0, VOCAB, seed=3, key="utt-1") == hyps


def test_corruption_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rate"):
        label_noise.corrupt_tokens([1], 1.5, rng, VOCAB)
    with pytest.raises(ValueError, match="two non-blank"):
        label_noise.corrupt_tokens([1], 0.5, rng, 2)


def test_edit_distance():
    assert label_noise.edit_distance([1, 2, 3], [1, 3, 4]) == 2
    assert label_noise.edit_distance([], [5, 6]) == 2
    assert label_noise.edit_distance([1, 2], []) == 2
    assert label_noise.edit_distance([7, 1, 2], [1, 2]) == 1


# ----------------------------------------------------------------------------------------------
# pseudo-labelling a split


@pytest.fixture(scope="module")
def teacher():
    model = models.lstm_student(
        VOCAB,
        num_layers=1,
        units=16,
        frontend_units=16,
        prediction="stateless",
        prediction_units=16,
        prediction_embed_dim=8,
        joint_dim=16,
        dropout=0.0,
    )
    model.build_by_calling(num_features=NUM_MEL)
    # Sharper posteriors than at initialisation, so that the beam makes real choices.
    out = model.joint.output_layer
    out.kernel.assign(out.kernel * 4.0)
    return model


@pytest.fixture(scope="module")
def frontend():
    return features.LogMel(num_mel_bins=NUM_MEL)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    pattern = write_tiny_records(
        str(root / "in"), "train-unlabeled", num_files=2, per_file=5, vocab_size=VOCAB, seed=3
    )
    return root, pattern


def _run(model, frontend, pattern, out_dir, settings=SETTINGS):
    return pseudo_label.pseudo_label(
        model,
        pattern,
        str(out_dir),
        settings,
        frontend=frontend,
        batch_size=4,
        ids_to_text=tokens_text,
        progress=False,
    )


@pytest.fixture(scope="module")
def clean_run(teacher, frontend, split):
    root, pattern = split
    return _run(teacher, frontend, pattern, root / "clean")


def _read(pattern, with_nbest):
    out = []
    for path in sorted(glob.glob(pattern)):
        for s in tf.data.TFRecordDataset(path):
            out.append({k: v.numpy() for k, v in records.parse_example(s, with_nbest).items()})
    return out


def _decoder_reference(model, frontend, examples, hypotheses=None):
    """The decoder's own N-best and full-sum scores on one padded batch of the examples."""
    waveform = np.zeros([len(examples), max(e["num_samples"] for e in examples)], np.float32)
    for b, e in enumerate(examples):
        waveform[b, : e["num_samples"]] = e["waveform"]
    feats, lengths = frontend(waveform, [e["num_samples"] for e in examples])
    if hypotheses is None:
        # Traced: an eager beam search runs its while loops op by op, which is slow.
        nbest = tf.function(decoding.beam_search)(
            model, feats, lengths, SETTINGS.beam_width, SETTINGS.nbest
        )
        hypotheses = [
            [row[:n].tolist() for row, n, s in zip(ids, lens, sc, strict=True) if s > -np.inf]
            for ids, lens, sc in zip(
                nbest.token_ids.numpy(), nbest.lengths.numpy(), nbest.scores.numpy(), strict=True
            )
        ]
    ids, lens = pseudo_label.pad_hypotheses(hypotheses, SETTINGS.nbest)
    scores = decoding.score(model, feats, lengths, ids, lens).numpy()
    return hypotheses, [scores[b, : len(h)] for b, h in enumerate(hypotheses)]


def _stored(example):
    return [
        row[:n].tolist()
        for row, n in zip(example["nbest_token_ids"], example["nbest_lengths"], strict=True)
    ]


def test_records_keep_fields_and_hold_decoder_nbest(teacher, frontend, split, clean_run):
    root, pattern = split
    originals = _read(pattern, with_nbest=False)
    labelled = _read(str(root / "clean" / "*.tfrecord"), with_nbest=True)
    assert [e["utterance_id"] for e in labelled] == [e["utterance_id"] for e in originals]
    for orig, lab in zip(originals, labelled, strict=True):
        for key in ("waveform", "text", "token_ids", "speaker_id", "duration"):
            np.testing.assert_array_equal(lab[key], orig[key])
    hyps, scores = _decoder_reference(teacher, frontend, labelled)
    for lab, h, s in zip(labelled, hyps, scores, strict=True):
        assert _stored(lab) == h
        np.testing.assert_allclose(lab["teacher_scores"], s, rtol=1e-4)
    counts = [len(e["nbest_lengths"]) for e in labelled]
    assert max(counts) == SETTINGS.nbest and min(counts) >= 1
    assert any(len(set(map(tuple, _stored(e)))) > 1 for e in labelled)


def test_manifest_records_teacher_wer(split, clean_run):
    root, _ = split
    with open(root / "clean" / pseudo_label.MANIFEST) as f:
        manifest = json.load(f)
    assert manifest["utterances"] == 10 and len(manifest["shards"]) == 2
    assert manifest["beam_width"] == 4 and manifest["nbest"] == 3 and manifest["noise_rate"] == 0
    labelled = _read(str(root / "clean" / "*.tfrecord"), with_nbest=True)
    refs = [tokens_text(e["token_ids"]) for e in labelled]
    firsts = [tokens_text(_stored(e)[0]) for e in labelled]
    want = metrics.corpus_errors(refs, firsts)
    assert manifest["teacher_wer"] == pytest.approx(want.wer)
    assert manifest["teacher_word_errors"]["errors"] == want.errors > 0
    # The tiny records' words are their tokens, so word and word-piece error rates agree.
    assert manifest["teacher_token_error_rate"] * 100 == pytest.approx(want.wer)
    assert manifest["label_wer"] == manifest["teacher_wer"] and manifest["applied_noise_rate"] == 0


def test_pipeline_reads_the_pseudo_labels(split, clean_run):
    from tfkd.data import pipeline
    from tfkd.losses import fullsum_distillation_loss

    root, _ = split
    labelled = {e["utterance_id"]: e for e in _read(str(root / "clean" / "*.tfrecord"), True)}
    ds = pipeline.make_dataset(
        str(root / "clean" / "*.tfrecord"),
        global_batch_size=10,
        with_nbest=True,
        with_text=True,
        deterministic=True,
    )
    batch = next(iter(ds))
    assert batch["nbest_token_ids"].shape[:2] == (10, SETTINGS.nbest)
    for b, utt in enumerate(batch["utterance_id"].numpy()):
        e = labelled[utt]
        n = int(batch["nbest_count"][b])
        assert n == len(e["nbest_lengths"])
        np.testing.assert_array_equal(batch["teacher_scores"][b, :n], e["teacher_scores"])
    # Student = teacher + 1 on real hypotheses, 0 on padding (scored -1e30): loss exactly 1.
    real = np.arange(SETTINGS.nbest)[None, :] < batch["nbest_count"].numpy()[:, None]
    student = np.where(real, batch["teacher_scores"].numpy() + 1.0, 0.0)
    loss = fullsum_distillation_loss(
        batch["teacher_scores"], student, batch["nbest_lengths"], batch["nbest_count"]
    )
    np.testing.assert_allclose(loss.numpy(), np.ones(10), rtol=1e-5)


def test_resume_skips_finished_shards(teacher, frontend, split, clean_run):
    root, pattern = split
    out = root / "clean"
    shards = sorted(glob.glob(str(out / "*.tfrecord")))
    before = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in shards}
    # Every shard is finished: no decoding at all (a None model would fail at the first use).
    again = _run(None, frontend, pattern, out)
    assert [s["skipped"] for s in again["shards"]] == [True, True]
    assert again["teacher_wer"] == clean_run["teacher_wer"] and again["utterances"] == 10
    assert {p: os.stat(p).st_mtime_ns for p in shards} == {p: m for p, (m, _) in before.items()}
    # A lost shard (and a stale temp file of an interrupted run) is redone, the other kept.
    os.remove(shards[1])
    with open(shards[1] + ".tmp-123", "wb") as f:
        f.write(b"partial")
    redo = _run(teacher, frontend, pattern, out)
    assert [s["skipped"] for s in redo["shards"]] == [True, False]
    assert open(shards[1], "rb").read() == before[shards[1]][1]
    assert not os.path.exists(shards[1] + ".tmp-123")
    assert os.stat(shards[0]).st_mtime_ns == before[shards[0]][0]
    assert redo["teacher_wer"] == clean_run["teacher_wer"]


def test_noise_corrupts_and_rescores(teacher, frontend, split, clean_run):
    root, pattern = split
    noisy_settings = pseudo_label.Settings(
        beam_width=4, nbest=3, noise_rate=0.4, seed=7, teacher="random-init"
    )
    manifest = _run(teacher, frontend, pattern, root / "noisy", noisy_settings)
    clean = _read(str(root / "clean" / "*.tfrecord"), with_nbest=True)
    noisy = _read(str(root / "noisy" / "*.tfrecord"), with_nbest=True)
    changed = 0
    for c, n in zip(clean, noisy, strict=True):
        want = label_noise.corrupt_nbest(_stored(c), 0.4, VOCAB, 7, c["utterance_id"].decode())
        assert _stored(n) == want
        assert all(0 not in h for h in want)  # never the blank id
        for hc, hn, sc, sn in zip(
            _stored(c), want, c["teacher_scores"], n["teacher_scores"], strict=True
        ):
            if hc != hn:
                changed += 1
                assert abs(sc - sn) > 1e-3  # the teacher's belief in the new label
            else:
                assert sc == pytest.approx(sn, rel=1e-4)
    assert changed >= 5
    # Stored scores are the teacher's full-sum scores of the corrupted hypotheses.
    _, rescored = _decoder_reference(teacher, frontend, noisy, [_stored(n) for n in noisy])
    for n, s in zip(noisy, rescored, strict=True):
        np.testing.assert_allclose(n["teacher_scores"], s, rtol=1e-4)
    assert manifest["teacher_wer"] == pytest.approx(clean_run["teacher_wer"])
    assert manifest["label_wer"] != manifest["teacher_wer"]
    edits = sum(
        label_noise.edit_distance(a, b)
        for c, n in zip(clean, noisy, strict=True)
        for a, b in zip(_stored(c), _stored(n), strict=True)
    )
    assert manifest["applied_noise_rate"] == pytest.approx(edits / manifest["clean_tokens"])
    assert 0.15 < manifest["applied_noise_rate"] < 0.65


def test_soft_targets_on_the_stored_noisy_1best(teacher, frontend, split, clean_run):
    from tfkd import losses
    from tfkd.data import pipeline
    from tfkd.training import trainers

    root, pattern = split
    settings = pseudo_label.Settings(
        beam_width=4, nbest=3, noise_rate=0.4, seed=7, teacher="random-init", soft_targets=True
    )
    manifest = _run(teacher, frontend, pattern, root / "soft", settings)
    assert manifest["soft_targets"] and manifest["teacher_reduction_factor"] == 4
    noisy_plain = pseudo_label.Settings(**{**settings.__dict__, "soft_targets": False})
    assert pseudo_label.shard_fingerprint(
        glob.glob(pattern)[0], settings
    ) != pseudo_label.shard_fingerprint(glob.glob(pattern)[0], noisy_plain)
    clean = _read(str(root / "clean" / "*.tfrecord"), with_nbest=True)
    out = []
    for path in sorted(glob.glob(str(root / "soft" / "*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(path):
            ex = records.parse_example(raw, with_nbest=True, with_soft_targets=True)
            out.append({k: v.numpy() for k, v in ex.items()})
    assert records.has_soft_targets(sorted(glob.glob(str(root / "soft" / "*.tfrecord")))[0])
    assert not records.has_soft_targets(sorted(glob.glob(str(root / "clean" / "*.tfrecord")))[0])
    corrupted = 0
    for c, e in zip(clean, out, strict=True):
        first = _stored(e)[0]  # the corrupted 1-best the targets must follow
        corrupted += first != _stored(c)[0]
        feats, lengths = frontend(e["waveform"][None], [e["num_samples"]])
        enc, enc_lengths = teacher.encode(feats, lengths, training=False)
        frames = int(enc_lengths[0])
        assert e["soft_target_frames"] == frames
        assert e["soft_targets"].shape == (frames, len(first) + 1, 3)
        logits = teacher.joint(enc, teacher.predict_labels(tf.constant([first], tf.int32)))
        want = losses.collapsed_lattice(logits, [first], [len(first)]).numpy()[0]
        np.testing.assert_allclose(e["soft_targets"], want[:frames], rtol=1e-4, atol=1e-4)
        assert np.all(e["soft_targets"][:, len(first), 0] <= -1e29)  # no label after the last
    assert corrupted >= 3

    # Batches: [B, T_max, U_max + 1, 3]; static shapes pad U to max_label_length + 1, and
    # label_bucket trimming cuts it with the labels.
    def first_batch(**options):
        pattern = str(root / "soft" / "*.tfrecord")
        dataset = pipeline.make_dataset(
            pattern, global_batch_size=4, with_nbest=True, deterministic=True, **options
        )
        return next(iter(dataset))

    batch = first_batch()
    longest_first = int(tf.reduce_max(batch["nbest_lengths"][:, 0]))
    assert batch["soft_targets"].shape == (
        4,
        int(tf.reduce_max(batch["soft_target_frames"])),
        longest_first + 1,
        3,
    )
    longest = max(int(e["nbest_lengths"].max()) for e in out)
    batch = first_batch(
        static_shapes=True, max_duration_s=1.5, max_label_length=longest, nbest_size=3
    )
    assert batch["soft_targets"].shape[2:] == (longest + 1, 3)
    trimmed = trainers.trim_labels(batch, 4)
    nodes = trimmed["nbest_token_ids"].shape[2] + 1
    assert trimmed["soft_targets"].shape[2] == nodes <= longest + 1
    assert trimmed["nbest_token_ids"].shape[2] % 4 == 0 or nodes == longest + 1
    without = first_batch(soft_targets=False)
    assert "soft_targets" not in without


def test_refuses_to_overwrite_inputs(teacher, frontend, split):
    root, pattern = split
    with pytest.raises(ValueError, match="holds the input"):
        _run(teacher, frontend, pattern, root / "in")
    with pytest.raises(ValueError, match="nbest"):
        pseudo_label.Settings(beam_width=2, nbest=3)


# ----------------------------------------------------------------------------------------------
# bin/pseudo_label


@pytest.mark.slow
def test_bin_pseudo_label_restores_the_trainer_checkpoint(tmp_path):
    import subprocess
    import sys

    import gin
    import keras

    from tfkd import config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pattern = write_tiny_records(str(tmp_path / "in"), "train-unlabeled", 1, 4, 16, seed=5)
    bindings = [f"TRAIN_RECORDS = '{pattern}'"]
    try:
        config.parse_gin(["gin/test/tiny.gin"], bindings)
        keras.utils.set_random_seed(2)
        model = gin.query_parameter("train.model_fn").scoped_configurable_fn()
    finally:
        gin.clear_config()
    model.build_by_calling(num_features=80)
    out = model.joint.output_layer
    out.kernel.assign(out.kernel * 4.0)
    teacher_dir = str(tmp_path / "teacher")
    ckpt = tf.train.Checkpoint(
        model=model, optimizer=keras.optimizers.Adam(), step=tf.Variable(5, dtype=tf.int64)
    )
    saved = tf.train.CheckpointManager(ckpt, teacher_dir, 1, checkpoint_name="ckpt").save(5)

    argv = [
        sys.executable,
        os.path.join(root, "bin", "pseudo_label"),
        f"--teacher_dir={teacher_dir}",
        "--gin_file=gin/test/tiny.gin",
        f"--input_pattern={pattern}",
        f"--output_dir={tmp_path / 'out'}",
        "--beam_width=3",
        "--nbest=2",
        "--noise_rate=0.2",
        "--seed=4",
        "--soft_targets",
    ]
    argv += [f"--gin_bindings={b}" for b in bindings]
    bad = subprocess.run(
        argv[: -len(bindings)] + ["--nbest=5"] + argv[-len(bindings) :],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "nbest" in bad.stderr and "Traceback" not in bad.stderr
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out" / pseudo_label.MANIFEST) as f:
        manifest = json.load(f)
    assert manifest["teacher"] == os.path.abspath(saved) and manifest["utterances"] == 4
    assert "teacher_wer" not in manifest  # no SentencePiece model in tiny.gin

    # The restored teacher labels exactly as the in-memory one does.
    settings = pseudo_label.Settings(
        beam_width=3,
        nbest=2,
        noise_rate=0.2,
        seed=4,
        teacher=os.path.abspath(saved),
        soft_targets=True,
    )
    pseudo_label.pseudo_label(model, pattern, str(tmp_path / "ref"), settings, progress=False)
    assert manifest["soft_targets"] and manifest["teacher_reduction_factor"] == 4
    got = _read_soft(str(tmp_path / "out" / "*.tfrecord"))
    want = _read_soft(str(tmp_path / "ref" / "*.tfrecord"))
    for g, w in zip(got, want, strict=True):
        assert _stored(g) == _stored(w)
        np.testing.assert_allclose(g["teacher_scores"], w["teacher_scores"], rtol=1e-5)
        assert g["soft_targets"].shape == (g["soft_target_frames"], g["nbest_lengths"][0] + 1, 3)
        np.testing.assert_allclose(g["soft_targets"], w["soft_targets"], rtol=1e-5, atol=1e-5)


def _read_soft(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        for s in tf.data.TFRecordDataset(path):
            ex = records.parse_example(s, with_nbest=True, with_soft_targets=True)
            out.append({k: v.numpy() for k, v in ex.items()})
    return out
