"""Forward parity with real PyTorch modules written layer for layer.

torchvision itself is not installable here (no CPU build), so its AlexNet is
rebuilt from plain torch.nn with torchvision's exact layer order; its state
dict keys are torchvision's, so the same import loads real torchvision weights.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.model import alexnet
from alexnet_jax.model import torch_weights

torch = pytest.importorskip(
    'torch', reason='PyTorch not installed: pip install -r requirements-parity.txt')
nn = torch.nn
from tests.torch_models import torchvision_alexnet  # pylint: disable=g-import-not-at-top,wrong-import-position


class TowerLRN(nn.Module):
  """torch's LRN divides alpha by size: alpha=size*1e-4 is the paper's 1e-4."""

  def __init__(self, groups):
    super().__init__()
    self.groups = groups
    self.lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.)

  def forward(self, x):
    return torch.cat([self.lrn(t) for t in x.chunk(self.groups, 1)], 1)


def paper_alexnet(num_classes, groups):
  """The 2012 net in PyTorch: grouped conv2/4/5 and LRN inside each tower."""
  return nn.Sequential(
      nn.Conv2d(3, 96, 11, 4), nn.ReLU(), TowerLRN(1), nn.MaxPool2d(3, 2),
      nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(),
      TowerLRN(groups), nn.MaxPool2d(3, 2),
      nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
      nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(),
      nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(),
      nn.MaxPool2d(3, 2), nn.Flatten(),
      nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(4096, num_classes))


PAPER_LAYERS = {'conv1': '0', 'conv2': '4', 'conv3': '8', 'conv4': '10',
                'conv5': '12', 'fc6': '16', 'fc7': '19', 'fc8': '22'}


def compare(torch_model, flax_model, layers, image_size, seed=0):
  torch.manual_seed(seed)
  torch_model.eval()
  for m in torch_model.modules():  # Large enough activations to exercise LRN.
    if isinstance(m, nn.Conv2d):
      nn.init.normal_(m.weight, 0, 0.05)
      nn.init.uniform_(m.bias, 0, 0.5)
  x = np.random.default_rng(seed).normal(
      0, 1, (2, 3, image_size, image_size)).astype(np.float32)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x)).numpy()
  params = torch_weights.params_from_torch(torch_model.state_dict(), layers)
  got = flax_model.apply({'params': params},
                         jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  got = np.asarray(got)
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert rel < 1e-4, rel
  return got


def test_torchvision_alexnet_parity():
  compare(torchvision_alexnet(10), alexnet.AlexNetTorchvision(num_classes=10),
          torch_weights.TORCHVISION_LAYERS, 224)


def test_torchvision_alexnet_parity_with_adaptive_pool_at_other_size():
  compare(torchvision_alexnet(10), alexnet.AlexNetTorchvision(num_classes=10),
          torch_weights.TORCHVISION_LAYERS, 256)


@pytest.mark.parametrize('groups', [1, 2])
def test_paper_alexnet_parity_with_lrn_and_towers(groups):
  compare(paper_alexnet(10, groups),
          alexnet.AlexNet(num_classes=10, groups=groups), PAPER_LAYERS, 227)
