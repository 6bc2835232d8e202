"""torchvision's AlexNet on ImageNet: the config of converted weights.

`python -m alexnet_jax.convert` writes this config (with any --config.*
overrides) into the workdir of torchvision's pretrained AlexNet
(alexnet-owt-7be5be79.pth), so `predict`, `evaluate` and further training
read the same preprocessing: shorter side to 256, central 224 crop, ImageNet
mean/std, one view (torchvision's published 56.52% / 79.07% are single
centre-crop figures).

Training follows torchvision's recipe for AlexNet (references/classification,
"alexnet and vgg"): batch 256, lr 0.01 times 0.1 every 30 epochs, momentum
0.9, weight decay 1e-4, 90 epochs, Inception-style crops and flips. Two
differences remain: momentum and decay follow the paper's update rule and
decay only kernels (optim.py), where PyTorch's SGD decays biases too.

TFDS imagenet2012 by default; an ImageNet folder tree:
--config.dataset=image_folder --config.data_dir=DIR.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_torchvision'
  c.num_classes = 1000
  c.dataset = 'imagenet2012'
  c.image_size = 224
  c.resize_size = 256
  c.crop_padding = 0
  c.random_resized_crop = True
  c.random_flip = True
  c.eval_flip = False
  c.ten_crop = False
  c.val_examples = 10_000
  c.batch_size = 256
  c.eval_batch_size = 256
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = 'step'
  c.lr_step_epochs = (30, 60)
  c.lr_step_factor = 0.1
  c.num_epochs = 90.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.data_workers = 8
  return c
