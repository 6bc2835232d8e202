"""CIFAR-10 upsampled to 227x227 into the paper's two-tower net, as the PyTorch
CIFAR-10 AlexNets this project was compared with do.

The 2012 recipe (lr 0.01, /10 on plateau), on CIFAR, with He init: the
paper's own init (--config.init=paper) sits at chance here, at either input
scale, while He's trains from the first steps (measured: docs/models.md,
"The paper's input scale"). Expensive on a CPU (~19 images/s on 2 cores); meant for
accelerators.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_paper'
  c.dataset = 'cifar10'
  c.image_size = 227
  c.init = 'he'
  c.schedule = 'plateau'
  c.num_epochs = 90.0
  c.half_precision = True
  return c
