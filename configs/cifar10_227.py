"""The seeds' setup: CIFAR-10 upsampled to 227x227 into the paper's net.

The 2012 recipe as written (paper init, lr 0.01, /10 on plateau), on CIFAR.
Expensive on a CPU (~1.1 GFLOP per image forward); meant for accelerators.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_paper'
  c.dataset = 'cifar10'
  c.image_size = 227
  c.init = 'paper'
  c.schedule = 'plateau'
  c.num_epochs = 90.0
  c.half_precision = True
  return c
