"""The paper's study: its plan (`plan`), the jobs it expands into (`jobs`), the scheduler that
runs them (`scheduler`), and the report of its results (`report`, `stats`). The root of
`tools/run_study.py`; no TensorFlow."""
