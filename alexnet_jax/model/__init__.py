"""The model: AlexNet as one Flax module with presets (`alexnet.py`), its
layers (`layers.py`), and PyTorch's side: torchvision weights in
(`torch_weights.py`) and a twin for timing (`torch_twin.py`)."""
