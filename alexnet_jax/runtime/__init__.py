"""Where and how a run executes: the device mesh and shardings (`mesh.py`),
the multi-process start (`distributed.py`), checkpoints (`checkpoints.py`),
signals (`preemption.py`), and what a run writes for people (`reporting.py`,
`curves.py`, and `pictures.py` for `alexnet_jax.visualize`)."""
