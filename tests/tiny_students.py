"""A tiny built LSTM transducer student shared by the export tests."""

import keras

from tfkd.models import lstm_student


def tiny_lstm_student(vocab_size, seed=3):
    """A 1-layer, 24-unit causal LSTM student, seeded and built on 80-dim features."""
    keras.utils.set_random_seed(seed)
    model = lstm_student(
        vocab_size,
        num_layers=1,
        units=24,
        frontend_units=24,
        prediction_units=16,
        prediction_embed_dim=8,
        joint_dim=16,
        dropout=0.0,
    )
    return model.build_by_calling(num_features=80)
