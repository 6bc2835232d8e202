"""torchvision's AlexNet in plain torch.nn, for the parity and pretrained
tests (torchvision itself has no CPU build here). Import it after
`pytest.importorskip('torch')`."""

import torch

nn = torch.nn


def torchvision_alexnet(num_classes):
  """torchvision.alexnet.alexnet.AlexNet, module for module."""
  class AlexNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
          nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
          nn.Linear(4096, num_classes))

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  return AlexNet()
