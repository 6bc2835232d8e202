"""The learning task, apart from the loop that runs it: config checks and
durations (`config.py`), the train state (`state.py`), the optimizer
(`optim.py`), the train step (`steps.py`), evaluation (`evaluation.py`),
fine-tuning's start (`finetune.py`) and a workdir read back (`workdir.py`)."""
