"""SavedModels for TF Serving: waveform in, text out, everything in the graph.

`ServingModule` wraps a trained transducer, its front end and the in-graph detokeniser
(`tfkd.data.tokenizer.IdsToText`) into three signatures (all batch-major, any batch size and
any number of samples):

- `serving_default(waveform float32 [B, N], waveform_length int32 [B])`
  -> `transcript string [B]`, `token_ids int32 [B, U]` (0-padded), `token_length int32 [B]`,
  `score float32 [B]` (log-probability of the greedy alignment, blanks included);
- `transcribe_nbest(waveform, waveform_length)` -> `transcripts string [B, N]`,
  `token_ids int32 [B, N, U]`, `token_lengths int32 [B, N]`, `scores float32 [B, N]` (beam
  search; -inf marks an empty slot);
- `score_hypotheses(waveform, waveform_length, token_ids int32 [B, N, U],
  token_lengths int32 [B, N])` -> `scores float32 [B, N]`, the full-sum log P(y|x).

Input validation runs in the graph (`tf.debugging` asserts, so TF Serving returns the message as
an INVALID_ARGUMENT error): first the ranks (a loaded signature does not check them, so a 1-D
or `[1, N, 1]` waveform or a scalar length would otherwise fail deep in the graph), then batch
sizes must agree, `0 <= waveform_length <= N`, the valid samples
must be finite (NaN or Inf is an error; padding is never read), and `waveform_length` may not
exceed the configured maximum duration. Empty audio is not an error: an utterance shorter than
one analysis window (25 ms) has no frames and gets an empty transcript with score 0.

Decoding is frame-exact whatever the padding: the front end and the encoder ignore samples past
`waveform_length` (see `tfkd.features`), so a padded batch transcribes like single utterances.
There are no Python callbacks and no XLA-compiled functions (the full sum uses
`tfkd.export.full_sum`), so the export runs unchanged under `tensorflow_model_server`.
"""

from __future__ import annotations

import os
import re
import shutil

import tensorflow as tf

from tfkd import decoding
from tfkd.decoding import stepping
from tfkd.export.full_sum import full_sum_log_prob

SIGNATURES = ("serving_default", "transcribe_nbest", "score_hypotheses")

_WAVEFORM = tf.TensorSpec([None, None], tf.float32, name="waveform")
_LENGTH = tf.TensorSpec([None], tf.int32, name="waveform_length")
_TOKENS = tf.TensorSpec([None, None, None], tf.int32, name="token_ids")
_TOKEN_LENGTHS = tf.TensorSpec([None, None], tf.int32, name="token_lengths")

# What each input must look like, for the rank checks' messages.
_EXPECTED = {
    "waveform": "float32 [B, N] (rank 2: a batch of zero-padded mono waveforms; one utterance "
    "is [1, N])",
    "waveform_length": "int32 [B] (rank 1: valid samples per waveform row; one utterance is [1], "
    "not a scalar)",
    "token_ids": "int32 [B, N, U] (rank 3: N hypotheses of U tokens per waveform row)",
    "token_lengths": "int32 [B, N] (rank 2)",
}


def _runtime_rank(x):
    """int32 scalar rank of `x`, computed when the graph runs.

    `tf.rank` and `tf.size(tf.shape(x))` are constant-folded from the signature's static rank,
    which a caller of a loaded SavedModel can violate; a boolean mask has no static length.
    """
    shape = tf.shape(x)
    return tf.size(tf.boolean_mask(shape, shape >= 0))


def _rank_checked(**inputs):
    """The `inputs` (name=tensor) as identities that exist only after their ranks are checked, so
    that no op can fail on a wrong rank first."""
    checks = [
        tf.debugging.assert_equal(
            _runtime_rank(x),
            x.shape.rank,
            message=f"{name} must be {_EXPECTED[name]}; got rank",
            summarize=1,
        )
        for name, x in inputs.items()
    ]
    with tf.control_dependencies(checks):
        return [tf.identity(x) for x in inputs.values()]


class ServingModule(tf.Module):
    """Features → model → decoding → text, as `tf.function`s with fixed signatures.

    Args:
      model: a built transducer (`tfkd.models.Transducer`).
      frontend: the `LogMel` layer the model was trained with (built).
      ids_to_text: `IdsToText` layer of the model's vocabulary.
      max_duration_s: longest accepted utterance, in seconds.
      beam_width: beam of `transcribe_nbest`; it returns `nbest` hypotheses.
      nbest: hypotheses per utterance of `transcribe_nbest` (<= beam_width).
      max_symbols_per_frame: label limit per encoder frame (greedy and beam).
    """

    def __init__(
        self,
        model,
        frontend,
        ids_to_text,
        max_duration_s=30.0,
        beam_width=4,
        nbest=4,
        max_symbols_per_frame=3,
    ):
        super().__init__(name="tfkd_serving")
        if not 1 <= nbest <= beam_width:
            raise ValueError(f"need 1 <= nbest <= beam_width, got {nbest}, {beam_width}")
        self.model = model
        self.frontend = frontend
        self.ids_to_text = ids_to_text
        self.max_samples = int(round(max_duration_s * frontend.sample_rate))
        self.beam_width, self.nbest = int(beam_width), int(nbest)
        self.max_symbols_per_frame = int(max_symbols_per_frame)
        self.vocab_size = int(model.vocab_size)
        self.serving_default = tf.function(self._transcribe, input_signature=[_WAVEFORM, _LENGTH])
        self.transcribe_nbest = tf.function(
            self._transcribe_nbest, input_signature=[_WAVEFORM, _LENGTH]
        )
        self.score_hypotheses = tf.function(
            self._score_hypotheses,
            input_signature=[_WAVEFORM, _LENGTH, _TOKENS, _TOKEN_LENGTHS],
        )

    def signatures(self):
        """{name: concrete function} for `tf.saved_model.save`."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    def _validated_features(self, waveform, waveform_length):
        """Checks the inputs, then returns (features [B, T, F], frame lengths [B])."""
        waveform, waveform_length = _rank_checked(
            waveform=waveform, waveform_length=waveform_length
        )
        batch, samples = tf.shape(waveform)[0], tf.shape(waveform)[1]
        # First on its own: with mismatched batches the checks below would fail on shapes
        # before this message could be reported.
        same_batch = tf.debugging.assert_equal(
            tf.shape(waveform_length)[0],
            batch,
            message="waveform_length must have one entry per waveform row",
        )
        with tf.control_dependencies([same_batch]):
            valid = tf.sequence_mask(waveform_length, samples)
        finite = tf.reduce_all(tf.math.is_finite(waveform) | ~valid)
        checks = [
            tf.debugging.assert_non_negative(
                waveform_length, message="waveform_length must be >= 0"
            ),
            tf.debugging.assert_less_equal(
                waveform_length,
                samples,
                message="waveform_length exceeds the number of samples in waveform",
            ),
            tf.debugging.assert_less_equal(
                waveform_length,
                self.max_samples,
                message=f"audio longer than the maximum of {self.max_samples} samples "
                f"({self.max_samples / self.frontend.sample_rate:g} s)",
            ),
            tf.debugging.Assert(
                finite, ["waveform holds NaN or Inf samples within waveform_length"]
            ),
        ]
        with tf.control_dependencies(checks):
            waveform = tf.where(valid, waveform, 0.0)
        return self.frontend(waveform, waveform_length)

    def _transcribe(self, waveform, waveform_length):
        feats, lengths = self._validated_features(waveform, waveform_length)
        ids, token_length, score = decoding.greedy_decode(
            self.model, feats, lengths, max_symbols_per_frame=self.max_symbols_per_frame
        )
        return {
            "transcript": self.ids_to_text(ids, token_length),
            "token_ids": ids,
            "token_length": token_length,
            "score": score,
        }

    def _transcribe_nbest(self, waveform, waveform_length):
        feats, lengths = self._validated_features(waveform, waveform_length)
        found = decoding.beam_search(
            self.model,
            feats,
            lengths,
            beam_width=self.beam_width,
            nbest=self.nbest,
            max_symbols_per_frame=self.max_symbols_per_frame,
        )
        shape = tf.shape(found.token_ids)
        flat_ids = tf.reshape(found.token_ids, [-1, shape[2]])
        text = self.ids_to_text(flat_ids, tf.reshape(found.lengths, [-1]))
        return {
            "transcripts": tf.reshape(text, shape[:2]),
            "token_ids": found.token_ids,
            "token_lengths": found.lengths,
            "scores": found.scores,
        }

    def _score_hypotheses(self, waveform, waveform_length, token_ids, token_lengths):
        waveform, waveform_length, token_ids, token_lengths = _rank_checked(
            waveform=waveform,
            waveform_length=waveform_length,
            token_ids=token_ids,
            token_lengths=token_lengths,
        )
        batch, n, max_u = tf.unstack(tf.shape(token_ids))
        shapes_ok = tf.debugging.assert_equal(
            tf.shape(token_lengths),
            tf.stack([batch, n]),
            message="token_lengths must be [B, N] like token_ids [B, N, U]",
        )
        with tf.control_dependencies([shapes_ok]):  # before any op that needs the shapes
            in_range = tf.sequence_mask(token_lengths, max_u)
        ids_ok = (token_ids > stepping.BLANK) & (token_ids < self.vocab_size)
        checks = [
            tf.debugging.assert_equal(
                batch,
                tf.shape(waveform)[0],
                message="token_ids must have one row of hypotheses per waveform",
            ),
            tf.debugging.assert_non_negative(token_lengths, message="token_lengths must be >= 0"),
            tf.debugging.assert_less_equal(
                token_lengths, max_u, message="token_lengths exceed the token_ids width"
            ),
            tf.debugging.Assert(
                tf.reduce_all(ids_ok | ~in_range),
                [f"token ids must lie in [1, {self.vocab_size}) (0 is blank)"],
            ),
        ]
        with tf.control_dependencies(checks):
            feats, lengths = self._validated_features(waveform, waveform_length)
        enc, enc_lengths = self.model.encode(feats, lengths, training=False)
        utt = tf.repeat(tf.range(batch), n)
        labels = tf.where(in_range, token_ids, 0)
        labels = tf.reshape(labels, [batch * n, max_u])
        enc_side = tf.gather(stepping.encoder_side(self.model, enc), utt)
        pred = self.model.predict_labels(labels, training=False)
        pred_side = stepping.prediction_side(self.model, pred)
        logits = stepping.joint_logits(self.model, enc_side, pred_side)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        scores = full_sum_log_prob(
            log_probs,
            labels,
            tf.gather(enc_lengths, utt),
            tf.reshape(token_lengths, [-1]),
            blank=stepping.BLANK,
        )
        # No frames (audio shorter than one window): no alignment exists.
        scores = tf.where(tf.gather(enc_lengths, utt) > 0, scores, float("-inf"))
        return {"scores": tf.reshape(scores, [batch, n])}


def export_saved_model(module, output_dir, gin_config=None, overwrite=False):
    """Writes `module` as a TF Serving model version: `EXPORT_DIR/<version>/`.

    The version directory appears atomically (written under a temporary name, then renamed),
    so a running `tensorflow_model_server --model_base_path=EXPORT_DIR` never loads half a model.
    Next to `saved_model.pb` it writes `operative_config.gin` (when given) and `README.md`
    describing the signatures.

    Args:
      module: a `ServingModule`.
      output_dir: `EXPORT_DIR/<version>`, the version a positive integer.
      gin_config: text of the operative gin configuration of the training run.
      overwrite: replace an existing version instead of failing.

    Returns:
      The version directory.

    Raises:
      ValueError: the last path component is not a version number.
      FileExistsError: the version exists and `overwrite` is false.
    """
    output_dir = os.path.abspath(output_dir)
    version = os.path.basename(output_dir.rstrip("/"))
    if not re.fullmatch(r"[0-9]+", version) or int(version) == 0:
        raise ValueError(
            f"{output_dir}: the export directory must end in a positive integer version "
            "(TF Serving layout EXPORT_DIR/<version>), e.g. runs/demo/export/saved_model/1"
        )
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pick a new version or pass overwrite")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    # A non-numeric name: TF Serving ignores it while it is being written.
    tmp = os.path.join(parent, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    if gin_config:
        with open(os.path.join(tmp, "operative_config.gin"), "w") as f:
            f.write(gin_config)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(signature_readme(module))
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.rename(tmp, output_dir)
    return output_dir


def signature_readme(module):
    """Markdown description of the signatures of `module` (written next to the export)."""
    seconds = module.max_samples / module.frontend.sample_rate
    return f"""# tfkd SavedModel

Signatures (batch-major; any batch size B and number of samples N):

- `serving_default(waveform float32 [B, N], waveform_length int32 [B])` ->
  `transcript` string [B], `token_ids` int32 [B, U] (0-padded), `token_length` int32 [B],
  `score` float32 [B] (log-probability of the greedy alignment).
- `transcribe_nbest(waveform, waveform_length)` -> `transcripts` string [B, {module.nbest}],
  `token_ids` int32 [B, {module.nbest}, U], `token_lengths` int32 [B, {module.nbest}],
  `scores` float32 [B, {module.nbest}] (beam {module.beam_width}; -inf marks an empty slot).
- `score_hypotheses(waveform, waveform_length, token_ids int32 [B, N, U],
  token_lengths int32 [B, N])` -> `scores` float32 [B, N], the full-sum log P(y|x).

Audio: {module.frontend.sample_rate} Hz mono, float samples in [-1, 1), zero padded after
`waveform_length`. Vocabulary: {module.vocab_size} ids, 0 = blank.

Errors (INVALID_ARGUMENT): an input of another rank (a 1-D waveform, a scalar length: one
utterance is `waveform` [1, N], `waveform_length` [1]), `waveform_length` < 0 or > N, NaN/Inf
within the valid samples, audio longer than {seconds:g} s, mismatched batch sizes, token ids
outside [1, {module.vocab_size}).
Audio shorter than one 25 ms window gives an empty transcript (score 0).

Serve with `tensorflow_model_server --rest_api_port=8501 --model_name=tfkd
--model_base_path=<absolute path of the directory holding this version>`.
"""
