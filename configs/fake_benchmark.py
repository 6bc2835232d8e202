"""Throughput of the paper's net on random 227x227 images; no download."""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_paper'
  c.dataset = 'fake'
  c.num_classes = 1000
  c.fake_image_size = 227
  c.fake_num_train = 1024
  c.fake_num_test = 256
  c.val_fraction = 0.0
  c.crop_padding = 0
  c.schedule = 'constant'
  c.num_steps = 100
  c.eval_every_epochs = 0.0  # No evaluation until the end.
  c.checkpoint_every_steps = 0  # Only the final checkpoint.
  c.half_precision = True
  return c
