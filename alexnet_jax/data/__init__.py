"""The data side: what each dataset is (`registry.py`), how it is read
(`cifar.py`, `tfds.py`, `streaming.py` with `images.py`), how batches reach
the train step (`feeds.py`, `in_memory.py`) and what happens to them on the
device (`augment.py`)."""
