"""The paper's study: its plan (`plan`), the scheduler that runs its jobs (`scheduler`), and the
report of its results (`report`, `stats`). The root of `tools/run_study.py`; no TensorFlow."""
