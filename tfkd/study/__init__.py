"""The paper's study: its plan (`plan`), the jobs it expands into (`jobs`), the scheduler that
runs them (`scheduler`), and the report of its results (`report`, `stats`). The root of
`tools/run_study.py`; `make demo`'s stages are a preset of the same jobs (`demo`, its summary
`demo_report`), the root of `tools/run_demo.py`. No TensorFlow."""
