"""tfkd: robust knowledge distillation from RNN-T models with the full-sum loss."""

__version__ = "0.1.0"
