"""Decoder correctness: greedy, beam search with N-best, full-sum scoring."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from decoding_fakes import make_fake_model, random_features

from tfkd import teacher
from tfkd.decoding import beam_search, greedy_decode, score

# ---------------------------------------------------------------- references


def lattice_log_probs(model, features, length, labels):
    """Log-softmax of the joint for one utterance: [T, U+1, V] (NumPy)."""
    enc, enc_len = model.encode(features[None, :length], np.array([length], np.int32))
    pred = model.predict_labels(np.asarray(labels, np.int32)[None, :])
    logits = model.joint(enc, pred)[0, : int(enc_len[0])]
    return tf.nn.log_softmax(logits, axis=-1).numpy().astype(np.float64)


def forward(lp, labels, combine):
    """Forward recursion over the lattice; `combine` is logaddexp (sum) or max (Viterbi)."""
    num_frames, num_states, _ = lp.shape
    alpha = np.full((num_frames, num_states), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(num_frames):
        for u in range(num_states):
            if t > 0:
                alpha[t, u] = combine(alpha[t, u], alpha[t - 1, u] + lp[t - 1, u, 0])
            if u > 0:
                alpha[t, u] = combine(alpha[t, u], alpha[t, u - 1] + lp[t, u - 1, labels[u - 1]])
    return alpha[-1, -1] + lp[-1, -1, 0]


def brute_force(lp, labels):
    """log P(y|x) by enumerating every alignment (tiny lattices only)."""
    num_frames, num_labels = lp.shape[0], len(labels)
    paths = []
    # An alignment places the U labels among T-1 inner blanks (the last blank is fixed).
    for label_slots in itertools.combinations(range(num_frames - 1 + num_labels), num_labels):
        t = u = 0
        total = 0.0
        for slot in range(num_frames - 1 + num_labels):
            if slot in label_slots:
                total += lp[t, u, labels[u]]
                u += 1
            else:
                total += lp[t, u, 0]
                t += 1
        paths.append(total + lp[t, u, 0])
    return np.logaddexp.reduce(paths)


def alignment_score(lp, labels, emissions_per_frame):
    """Log-probability of the alignment emitting `emissions_per_frame[t]` labels at frame t."""
    u, total = 0, 0.0
    for t, count in enumerate(emissions_per_frame):
        for _ in range(count):
            total += lp[t, u, labels[u]]
            u += 1
        total += lp[t, u, 0]
    return total


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    return make_fake_model(vocab_size=5, dim=8, seed=1, logit_scale=2.0, blank_bias=1.0)


@pytest.fixture(scope="module")
def batch():
    return random_features(4, 9, seed=3, min_frames=3)


def unpack(tokens, lengths):
    return [list(row[:n]) for row, n in zip(np.asarray(tokens), np.asarray(lengths), strict=True)]


# ---------------------------------------------------------------------- tests


def test_greedy_specific_output(model, batch):
    tokens, lengths, scores = greedy_decode(model, *batch, max_symbols_per_frame=2)
    assert tokens.dtype == tf.int32 and tokens.shape[0] == 4
    assert tokens.shape[1] == max(lengths.numpy())
    hyps = unpack(tokens, lengths)
    # Pinned on this fixed-seed model so that a silent change in decoding shows up.
    assert hyps == GREEDY_EXPECTED
    np.testing.assert_allclose(scores.numpy(), GREEDY_SCORES, rtol=1e-5)


def test_greedy_score_is_its_alignment_score(model, batch):
    feats, lens = batch
    m = 2
    tokens, lengths, scores = greedy_decode(model, feats, lens, max_symbols_per_frame=m)
    for b, hyp in enumerate(unpack(tokens, lengths)):
        lp = lattice_log_probs(model, feats[b], lens[b], hyp)
        # Re-run the greedy rule on the NumPy lattice to recover its alignment.
        u, counts = 0, []
        for t in range(lp.shape[0]):
            count = 0
            while count < m and u < len(hyp) and np.argmax(lp[t, u]) != 0:
                count, u = count + 1, u + 1
            counts.append(count)
        assert u == len(hyp)
        np.testing.assert_allclose(scores[b], alignment_score(lp, hyp, counts), rtol=1e-5)


def test_greedy_batch_without_frames_gives_empty_hypotheses(model, batch):
    # Traced for any batch size, as in exports: an all-empty batch used to fail on stacking an
    # empty TensorArray of unknown batch size.
    spec = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
    greedy_fn = tf.function(lambda f, n: greedy_decode(model, f, n), input_signature=spec)
    feats, lens = batch
    tokens, lengths, scores = greedy_fn(feats, np.zeros_like(lens))
    assert tokens.shape == (4, 0)
    np.testing.assert_array_equal(lengths, [0, 0, 0, 0])
    np.testing.assert_array_equal(scores, [0.0, 0.0, 0.0, 0.0])
    # Utterances without frames next to ones with frames: empty rows, the others unchanged.
    mixed = np.where(np.arange(4) % 2 == 0, lens, 0).astype(np.int32)
    tokens, lengths, scores = greedy_fn(feats, mixed)
    hyps = unpack(tokens, lengths)
    assert hyps[1] == [] and hyps[3] == [] and scores[1] == 0.0 and scores[3] == 0.0
    alone, _, _ = greedy_decode(model, feats[:1], lens[:1])
    assert hyps[0] == list(alone.numpy()[0])


@pytest.mark.parametrize("m", [1, 3])
def test_max_symbols_per_frame_respected(m):
    # Blank is nearly impossible, so each frame emits exactly its quota.
    eager = make_fake_model(vocab_size=4, seed=2, blank_bias=-30.0)
    feats, lens = random_features(3, 5, seed=4)
    _, lengths, scores = greedy_decode(eager, feats, lens, max_symbols_per_frame=m)
    np.testing.assert_array_equal(lengths.numpy(), lens * m)
    nbest = beam_search(eager, feats, lens, beam_width=3, max_symbols_per_frame=m)
    np.testing.assert_array_equal(nbest.lengths.numpy(), np.repeat(lens[:, None] * m, 3, 1))
    assert np.all(scores.numpy() < -25.0 * lens)  # the forced blanks are paid for


def test_beam_width_one_equals_greedy(model, batch):
    for m in (1, 2):
        tokens, lengths, scores = greedy_decode(model, *batch, max_symbols_per_frame=m)
        nbest = beam_search(model, *batch, beam_width=1, max_symbols_per_frame=m)
        assert unpack(nbest.token_ids[:, 0], nbest.lengths[:, 0]) == unpack(tokens, lengths)
        np.testing.assert_allclose(nbest.scores[:, 0], scores, rtol=1e-6)


def test_nbest_sorted_distinct_and_padded(model, batch):
    nbest = beam_search(model, *batch, beam_width=6, nbest=4, max_symbols_per_frame=2)
    assert nbest.token_ids.shape[:2] == (4, 4)
    scores = nbest.scores.numpy()
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 0)
    tokens, lengths = nbest.token_ids.numpy(), nbest.lengths.numpy()
    for b in range(4):
        hyps = unpack(tokens[b], lengths[b])
        assert len({tuple(h) for h in hyps}) == 4
        for row, n in zip(tokens[b], lengths[b], strict=True):
            assert np.all(row[n:] == 0)


def test_wider_beam_finds_at_least_greedy_probability(model, batch):
    greedy_scores = greedy_decode(model, *batch, max_symbols_per_frame=2)[2].numpy()
    best = beam_search(model, *batch, beam_width=8, max_symbols_per_frame=2).scores[:, 0]
    assert np.all(best.numpy() >= greedy_scores - 1e-5)
    assert np.any(best.numpy() > greedy_scores + 1e-3)


def test_unpruned_beam_merges_to_full_sum():
    # V=3, T=2, m=2: at most 2 * (2**5 - 1) states per frame, so K=64 prunes nothing and a
    # hypothesis with <= m labels collects every one of its alignments.
    tiny = make_fake_model(vocab_size=3, seed=5)
    feats, lens = random_features(1, 2, seed=6)
    nbest = beam_search(tiny, feats, lens, beam_width=64, max_symbols_per_frame=2)
    checked = 0
    hyps = unpack(nbest.token_ids[0], nbest.lengths[0])
    for hyp, s in zip(hyps, nbest.scores[0].numpy(), strict=True):
        if np.isfinite(s) and len(hyp) <= 2:
            lp = lattice_log_probs(tiny, feats[0], lens[0], hyp)
            np.testing.assert_allclose(s, forward(lp, hyp, np.logaddexp), rtol=1e-5)
            checked += 1
    assert checked == 1 + 2 + 4  # all sequences of length 0, 1, 2 over two labels


def test_empty_slots_when_fewer_hypotheses_than_nbest():
    tiny = make_fake_model(vocab_size=2, seed=5)
    feats, lens = random_features(1, 1, seed=6)
    nbest = beam_search(tiny, feats, lens, beam_width=4, max_symbols_per_frame=1)
    # One frame, one label allowed: only [] and [1] exist.
    assert np.isfinite(nbest.scores[0, :2]).all()
    assert np.isneginf(nbest.scores[0, 2:]).all()
    assert list(nbest.lengths[0].numpy()) == [0, 1, 0, 0]
    assert list(nbest.token_ids[0, :, 0].numpy()) == [0, 1, 0, 0]


def test_score_matches_numpy_alpha_and_brute_force(model, batch):
    feats, lens = batch
    hyps = np.array([[[1, 2, 0], [3, 0, 0], [0, 0, 0]], [[4, 4, 1], [2, 1, 0], [1, 0, 0]]])
    hyp_lens = np.array([[2, 1, 0], [3, 2, 1]], np.int32)
    got = score(model, feats[:2], lens[:2], hyps, hyp_lens).numpy()
    for b in range(2):
        for n in range(3):
            y = list(hyps[b, n, : hyp_lens[b, n]])
            lp = lattice_log_probs(model, feats[b], lens[b], y)
            np.testing.assert_allclose(got[b, n], forward(lp, y, np.logaddexp), rtol=1e-5)
            np.testing.assert_allclose(got[b, n], brute_force(lp, y), rtol=1e-5)
            assert got[b, n] >= forward(lp, y, max) - 1e-5


def test_full_sum_at_least_viterbi_and_beam(model, batch):
    feats, lens = batch
    nbest = beam_search(model, feats, lens, beam_width=4, max_symbols_per_frame=2)
    full = score(model, feats, lens, nbest.token_ids, nbest.lengths).numpy()
    assert np.all(full >= nbest.scores.numpy() - 1e-4)
    for b in range(4):
        for n in range(4):
            y = list(nbest.token_ids[b, n, : nbest.lengths[b, n]].numpy())
            viterbi = forward(lattice_log_probs(model, feats[b], lens[b], y), y, max)
            assert full[b, n] >= viterbi - 1e-5
    # With labels there are many alignments, and their sum exceeds what the beam kept;
    # the empty hypothesis has a single alignment, which the beam found exactly.
    has_labels = nbest.lengths.numpy() > 0
    assert np.all((full > nbest.scores.numpy() + 1e-3)[has_labels])
    np.testing.assert_allclose(full[~has_labels], nbest.scores.numpy()[~has_labels], rtol=1e-5)
    assert (~has_labels).sum() == 1


def test_batch_composition_and_padding_invariance(model, batch):
    feats, lens = batch
    extra = np.pad(feats, [[0, 0], [0, 5], [0, 0]])  # more padding
    together = beam_search(model, extra, lens, beam_width=3, max_symbols_per_frame=2)
    g_tokens, g_lengths, g_scores = greedy_decode(model, extra, lens)
    for b in (1, 3):  # the short ones: padded most in the batch
        alone_feats, alone_lens = feats[b : b + 1, : lens[b]], lens[b : b + 1]
        alone = beam_search(model, alone_feats, alone_lens, beam_width=3, max_symbols_per_frame=2)
        assert unpack(alone.token_ids[0], alone.lengths[0]) == unpack(
            together.token_ids[b], together.lengths[b]
        )
        np.testing.assert_allclose(alone.scores[0], together.scores[b], rtol=1e-5)
        tokens, lengths, scores = greedy_decode(model, alone_feats, alone_lens)
        assert unpack(tokens, lengths) == unpack(g_tokens[b : b + 1], g_lengths[b : b + 1])
        np.testing.assert_allclose(scores, g_scores[b : b + 1], rtol=1e-5)
    # Scoring: the same hypotheses in a reordered, re-padded batch.
    full = score(model, extra, lens, together.token_ids, together.lengths).numpy()
    order = [2, 0]
    hyps = np.pad(together.token_ids.numpy()[order], [[0, 0], [0, 0], [0, 2]])
    part = score(model, feats[order], lens[order], hyps, together.lengths.numpy()[order])
    np.testing.assert_allclose(part, full[order], rtol=1e-5)


def test_score_runs_encoder_once_per_utterance(batch):
    counted = make_fake_model(vocab_size=5, seed=1)
    calls = []
    encode = counted.encode

    def counting_encode(features, lengths, training=False):
        calls.append(int(tf.shape(features)[0]))
        return encode(features, lengths, training=training)

    counted.encode = counting_encode
    feats, lens = batch
    hyps = np.ones([4, 3, 2], np.int32)
    result = score(counted, feats, lens, hyps, np.full([4, 3], 2, np.int32))
    assert result.shape == (4, 3)
    assert calls == [4]  # one batched pass over the 4 utterances, not 12


@pytest.mark.slow
def test_beam_search_traces_under_tf_function(model, batch):
    # The fast suite traces both decoders through tfkd.split_wer.make_decode_fn.
    feats, lens = batch
    spec = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
    beam_fn = tf.function(
        lambda f, n: beam_search(model, f, n, beam_width=3, max_symbols_per_frame=2),
        input_signature=spec,
    )
    eager_nbest = beam_search(model, feats, lens, beam_width=3, max_symbols_per_frame=2)
    graph_nbest = beam_fn(feats, lens)
    np.testing.assert_array_equal(graph_nbest.token_ids, eager_nbest.token_ids)
    np.testing.assert_allclose(graph_nbest.scores, eager_nbest.scores, rtol=1e-6)


GREEDY_EXPECTED = [[3, 3, 3, 3, 3, 3, 1, 1], [4, 4, 1, 1], [4, 4], [1, 1, 4, 4]]
GREEDY_SCORES = [-19.705791, -7.795471, -5.487215, -8.743641]


# ------------------------------------------------- the real tfkd.models.Transducer


def _tiny_transducer(kind):
    from tfkd import models

    keras.utils.set_random_seed(7)
    if kind == "conformer+lstm":
        model = models.conformer_teacher(
            6,
            num_layers=1,
            dim=16,
            num_heads=2,
            kernel_size=3,
            subsampling_filters=8,
            prediction_units=16,
            prediction_embed_dim=8,
            joint_dim=16,
            dropout=0.0,
        )
    else:
        model = models.lstm_student(
            6,
            num_layers=1,
            units=16,
            frontend_units=16,
            prediction="stateless",
            prediction_units=16,
            prediction_embed_dim=8,
            joint_dim=16,
            dropout=0.0,
        )
    model.build_by_calling(num_features=4)
    # Sharper posteriors than at initialisation, so that decoding makes real choices.
    out = model.joint.output_layer
    out.kernel.assign(out.kernel * 4.0)
    return model


@pytest.fixture(
    scope="module",
    params=["conformer+lstm", pytest.param("lstm+stateless", marks=pytest.mark.slow)],
)
def transducer(request):
    return _tiny_transducer(request.param)


def test_transducer_decoders_consistent(transducer):
    feats, lens = random_features(3, 24, num_features=4, seed=8, min_frames=9)
    tokens, lengths, scores = greedy_decode(transducer, feats, lens, max_symbols_per_frame=2)
    nbest = beam_search(transducer, feats, lens, beam_width=1, max_symbols_per_frame=2)
    assert unpack(nbest.token_ids[:, 0], nbest.lengths[:, 0]) == unpack(tokens, lengths)
    np.testing.assert_allclose(nbest.scores[:, 0], scores, rtol=1e-5)
    assert lengths.numpy().sum() > 0
    nbest = beam_search(transducer, feats, lens, beam_width=4, nbest=3, max_symbols_per_frame=2)
    assert np.all(np.diff(nbest.scores.numpy(), axis=1) <= 0)
    full = score(transducer, feats, lens, nbest.token_ids, nbest.lengths).numpy()
    assert np.all(full >= nbest.scores.numpy() - 1e-4)
    for b in range(3):
        # The stepped prediction network and `predict_labels` agree: the greedy score is the
        # score of one alignment on the lattice built from whole label sequences.
        y = unpack(tokens, lengths)[b]
        lp = lattice_log_probs(transducer, feats[b], lens[b], y)
        assert scores[b] <= forward(lp, y, max) + 1e-4
        for n in range(3):
            y = list(nbest.token_ids[b, n, : nbest.lengths[b, n]].numpy())
            lp = lattice_log_probs(transducer, feats[b], lens[b], y)
            np.testing.assert_allclose(full[b, n], forward(lp, y, np.logaddexp), rtol=1e-4)


def test_transducer_batch_invariance(transducer):
    feats, lens = random_features(3, 24, num_features=4, seed=9, min_frames=9)
    padded = np.pad(feats, [[0, 0], [0, 8], [0, 0]])
    together = beam_search(transducer, padded, lens, beam_width=3, max_symbols_per_frame=2)
    full = score(transducer, padded, lens, together.token_ids, together.lengths).numpy()
    for b in (2,):
        alone_feats, alone_lens = feats[b : b + 1, : lens[b]], lens[b : b + 1]
        alone = beam_search(
            transducer, alone_feats, alone_lens, beam_width=3, max_symbols_per_frame=2
        )
        assert unpack(alone.token_ids[0], alone.lengths[0]) == unpack(
            together.token_ids[b], together.lengths[b]
        )
        np.testing.assert_allclose(alone.scores[0], together.scores[b], rtol=1e-4)
        alone_full = score(transducer, alone_feats, alone_lens, alone.token_ids, alone.lengths)
        np.testing.assert_allclose(alone_full[0], full[b], rtol=1e-4)


def test_score_is_differentiable_for_student_training(model, batch):
    feats, lens = batch
    hyps = np.array([[[1, 2], [3, 0]]] * 4, np.int32)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(score(model, feats, lens, hyps, np.full([4, 2], [2, 1], np.int32)))
    grads = tape.gradient(total, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) for g in grads) > 0


def test_teacher_nbest_full_sum_shares_one_encoder_pass(batch):
    # What full-sum distillation needs from a teacher (METHODS.md §4): the beam's N-best with
    # full-sum log P(y_n|x), not beam scores, computed on one encoder pass (`tfkd.teacher`).
    counted = make_fake_model(vocab_size=5, seed=1, logit_scale=2.0, blank_bias=1.0)
    feats, lens = batch
    found = beam_search(counted, feats, lens, beam_width=4, nbest=3, max_symbols_per_frame=2)
    calls = []
    encode = counted.encode

    def counting_encode(features, lengths, training=False):
        calls.append(int(tf.shape(features)[0]))
        return encode(features, lengths, training=training)

    counted.encode = counting_encode
    enc, enc_lengths = teacher.encode(counted, lambda w, n: (w, n), feats, lens)
    fields = teacher.nbest_fields(
        counted,
        enc,
        enc_lengths,
        beam_width=4,
        nbest_size=3,
        max_symbols_per_frame=2,
        full_sum=True,
    )
    assert calls == [4]
    assert fields["nbest_count"].numpy().tolist() == [3, 3, 3, 3]
    scores = fields["teacher_scores"].numpy()
    want = score(counted, feats, lens, found.token_ids, found.lengths).numpy()
    for b in range(4):
        got_hyps = map(tuple, unpack(fields["nbest_token_ids"][b], fields["nbest_lengths"][b]))
        ref_hyps = map(tuple, unpack(found.token_ids[b], found.lengths[b]))
        got = dict(zip(got_hyps, scores[b], strict=True))
        ref = dict(zip(ref_hyps, want[b], strict=True))
        assert got.keys() == ref.keys()
        for hyp, s in got.items():
            np.testing.assert_allclose(s, ref[hyp], rtol=1e-5)
