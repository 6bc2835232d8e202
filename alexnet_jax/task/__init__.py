"""The learning task, apart from the loop that runs it: config checks and
durations (`config.py`), the train state (`state.py`), the optimizer
(`optim.py`), the train step (`steps.py`), evaluation (`evaluation.py`),
fine-tuning's start (`finetune.py`), a workdir read back (`workdir.py`) and
a trained network looked inside (`inspection.py`: kernels, fc7 nearest
neighbours, the confusion matrix)."""
