"""Teacher and student builders. Plain functions with keyword arguments; gin binds them later.

Each builds its encoder and hands it to `assemble_transducer` (prediction network, joint,
`Transducer`). Each returns an unbuilt `Transducer`; call ``model.build_by_calling(num_features)``
(or run one real batch through it) before using its variables.

- `conformer_teacher`: non-causal Conformer, 4x (about 10M parameters at the defaults).
- `lstm_student`, `conformer_student`: small causal students at the teacher's frame rate.
- `low_frame_rate_student`: a small causal Conformer at 8x, i.e. half the teacher's frame rate;
  full-sum distillation does not need aligned frames.
"""

from tfkd.models.conformer import ConformerEncoder
from tfkd.models.joint import Joint
from tfkd.models.lstm import LstmEncoder
from tfkd.models.prediction import LstmPrediction, StatelessPrediction
from tfkd.models.transducer import Transducer


def prediction_network(
    vocab_size, kind="lstm", units=256, embed_dim=128, num_layers=1, context_size=2, dropout=0.1
):
    """An `LstmPrediction` (``kind="lstm"``) or a `StatelessPrediction` (``kind="stateless"``)."""
    if kind == "lstm":
        return LstmPrediction(vocab_size, embed_dim, units, num_layers, dropout, name="prediction")
    if kind == "stateless":
        return StatelessPrediction(
            vocab_size, context_size, embed_dim, units, dropout, name="prediction"
        )
    raise ValueError(f"unknown prediction network {kind!r}")


def assemble_transducer(
    encoder,
    vocab_size,
    prediction="lstm",
    prediction_units=256,
    prediction_embed_dim=128,
    prediction_layers=1,
    joint_dim=256,
    dropout=0.1,
    name="student",
):
    """The tail every preset shares: a prediction network and a `Joint` around ``encoder``.

    Builds them in this order and with the layer names ``prediction`` and ``joint``, which the
    checkpoints of every preset rely on.

    Args:
      encoder: an `Encoder` (`tfkd.models.encoder`), built by the caller.
      vocab_size: output classes, blank included.
      prediction, prediction_units, prediction_embed_dim, prediction_layers: `prediction_network`'s
        ``kind``, ``units``, ``embed_dim`` and ``num_layers``.
      joint_dim: the joint's hidden width.
      dropout: the prediction network's dropout.
      name: the model's name.

    Returns:
      An unbuilt `Transducer`.
    """
    pred = prediction_network(
        vocab_size,
        prediction,
        prediction_units,
        prediction_embed_dim,
        prediction_layers,
        dropout=dropout,
    )
    return Transducer(encoder, pred, Joint(vocab_size, joint_dim, name="joint"), name=name)


def conformer_teacher(
    vocab_size,
    num_layers=16,
    dim=144,
    num_heads=4,
    ff_expansion=4,
    kernel_size=31,
    subsampling_factor=4,
    subsampling_filters=144,
    frontend="conv",
    prediction="lstm",
    prediction_units=320,
    prediction_embed_dim=256,
    prediction_layers=1,
    joint_dim=320,
    dropout=0.1,
    name="teacher",
):
    """Non-causal Conformer transducer (Conformer-S-like at the defaults, about 10M params)."""
    encoder = ConformerEncoder(
        num_layers=num_layers,
        dim=dim,
        num_heads=num_heads,
        ff_expansion=ff_expansion,
        kernel_size=kernel_size,
        subsampling_factor=subsampling_factor,
        subsampling_filters=subsampling_filters,
        frontend=frontend,
        causal=False,
        dropout=dropout,
        name="encoder",
    )
    return assemble_transducer(
        encoder,
        vocab_size,
        prediction=prediction,
        prediction_units=prediction_units,
        prediction_embed_dim=prediction_embed_dim,
        prediction_layers=prediction_layers,
        joint_dim=joint_dim,
        dropout=dropout,
        name=name,
    )


def lstm_student(
    vocab_size,
    num_layers=3,
    units=320,
    subsampling_factor=4,
    frontend="stack",
    frontend_units=320,
    prediction="lstm",
    prediction_units=256,
    prediction_embed_dim=128,
    prediction_layers=1,
    joint_dim=256,
    dropout=0.1,
    name="student",
):
    """Unidirectional LSTM transducer; streams with chunks of ``subsampling_factor`` frames."""
    encoder = LstmEncoder(
        num_layers=num_layers,
        units=units,
        bidirectional=False,
        frontend=frontend,
        frontend_factor=subsampling_factor,
        frontend_units=frontend_units,
        dropout=dropout,
        name="encoder",
    )
    return assemble_transducer(
        encoder,
        vocab_size,
        prediction=prediction,
        prediction_units=prediction_units,
        prediction_embed_dim=prediction_embed_dim,
        prediction_layers=prediction_layers,
        joint_dim=joint_dim,
        dropout=dropout,
        name=name,
    )


def conformer_student(
    vocab_size,
    num_layers=6,
    dim=144,
    num_heads=4,
    ff_expansion=4,
    kernel_size=15,
    subsampling_factor=4,
    subsampling_filters=64,
    frontend="conv",
    chunk_size=1,
    left_context=64,
    prediction="lstm",
    prediction_units=256,
    prediction_embed_dim=128,
    prediction_layers=1,
    joint_dim=256,
    dropout=0.1,
    name="student",
):
    """Causal Conformer transducer with ``left_context`` encoder frames of attention memory."""
    encoder = ConformerEncoder(
        num_layers=num_layers,
        dim=dim,
        num_heads=num_heads,
        ff_expansion=ff_expansion,
        kernel_size=kernel_size,
        subsampling_factor=subsampling_factor,
        subsampling_filters=subsampling_filters,
        frontend=frontend,
        causal=True,
        chunk_size=chunk_size,
        left_context=left_context,
        dropout=dropout,
        name="encoder",
    )
    return assemble_transducer(
        encoder,
        vocab_size,
        prediction=prediction,
        prediction_units=prediction_units,
        prediction_embed_dim=prediction_embed_dim,
        prediction_layers=prediction_layers,
        joint_dim=joint_dim,
        dropout=dropout,
        name=name,
    )


def low_frame_rate_student(
    vocab_size,
    num_layers=6,
    dim=144,
    num_heads=4,
    kernel_size=15,
    subsampling_factor=8,
    left_context=32,
    prediction="lstm",
    prediction_units=256,
    joint_dim=256,
    dropout=0.1,
    name="student",
):
    """Causal Conformer student at 8x (80 ms frames): half the teacher's frame rate."""
    return conformer_student(
        vocab_size,
        num_layers=num_layers,
        dim=dim,
        num_heads=num_heads,
        kernel_size=kernel_size,
        subsampling_factor=subsampling_factor,
        left_context=left_context,
        prediction=prediction,
        prediction_units=prediction_units,
        joint_dim=joint_dim,
        dropout=dropout,
        name=name,
    )
