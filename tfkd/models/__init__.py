"""RNN-T models: encoders, prediction networks, joint, the `Transducer` and preset builders."""

from tfkd.models.conformer import ConformerEncoder
from tfkd.models.encoder import Encoder
from tfkd.models.joint import Joint
from tfkd.models.lstm import LstmEncoder
from tfkd.models.prediction import BLANK, LstmPrediction, StatelessPrediction
from tfkd.models.presets import (
    assemble_transducer,
    conformer_student,
    conformer_teacher,
    low_frame_rate_student,
    lstm_student,
    prediction_network,
)
from tfkd.models.subsampling import (
    Conv1DSubsampler,
    ConvSubsampler,
    StackingSubsampler,
    subsampled_lengths,
)
from tfkd.models.transducer import Transducer

__all__ = [
    "BLANK",
    "ConformerEncoder",
    "Conv1DSubsampler",
    "ConvSubsampler",
    "Encoder",
    "Joint",
    "LstmEncoder",
    "LstmPrediction",
    "StackingSubsampler",
    "StatelessPrediction",
    "Transducer",
    "assemble_transducer",
    "conformer_student",
    "conformer_teacher",
    "low_frame_rate_student",
    "lstm_student",
    "prediction_network",
    "subsampled_lengths",
]
