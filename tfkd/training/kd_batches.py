"""Moved to `tfkd.data.kd_batches` (next to the pipeline that produces the fields); this module
re-exports its names for existing imports."""

from tfkd.data.kd_batches import *  # noqa: F403
from tfkd.data.kd_batches import __all__  # noqa: F401
