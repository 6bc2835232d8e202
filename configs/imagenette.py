"""Imagenette (10 easy ImageNet classes, ~9.5k train / 3.9k val images): the
paper's pipeline on a dataset one GPU trains in well under an hour.

torchvision's single-tower variant at 224 with its Inception-style crops,
flips and the paper's PCA colour noise; batch 128, lr 0.01 with a short
warmup and cosine decay, 60 epochs; 10-crop test. TFDS `imagenette`
(downloads on a networked machine), or --config.dataset=image_folder
--config.data_dir=DIR for an extracted imagenette2 folder tree (its `val`
folder is the test split).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_torchvision'
  c.dataset = 'imagenette'
  c.image_size = 224
  c.resize_size = 256
  c.crop_padding = 0
  c.random_resized_crop = True
  c.pca_lighting = 0.1
  c.ten_crop = True
  c.val_fraction = 0.05
  c.batch_size = 128
  c.eval_batch_size = 256
  c.learning_rate = 0.01
  c.schedule = 'cosine'
  c.warmup_epochs = 2.0
  c.label_smoothing = 0.1
  c.num_epochs = 60.0
  c.log_every_steps = 20
  c.data_workers = 8
  c.half_precision = True
  return c
