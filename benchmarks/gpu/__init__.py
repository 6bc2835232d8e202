"""The GPU check's parts, one module each; `benchmarks/gpu_check.py` runs
them in order and writes the report (`report.py`)."""
