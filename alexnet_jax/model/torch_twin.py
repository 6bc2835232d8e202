"""PyTorch twins of alexnet_jax's models, for side-by-side speed only.

Built from a `models.AlexNet` instance's own attributes (widths, kernels,
strides, paddings, towers, LRN, pooling, FC width, dropout placement), so
every preset has its twin, layer for layer. PyTorch stays an optional extra:
nothing in the package imports this file.
"""

import torch
from torch import nn


class _TowerLRN(nn.Module):
  """The paper's LRN within each tower; torch divides alpha by size."""

  def __init__(self, groups):
    super().__init__()
    self.groups = groups
    self.lrn = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.)

  def forward(self, x):
    if self.groups == 1:
      return self.lrn(x)
    return torch.cat([self.lrn(t) for t in x.chunk(self.groups, 1)], 1)


class AlexNetTwin(nn.Module):

  def __init__(self, model):
    super().__init__()
    layers, channels = [], 3
    for i, (width, k, s, p) in enumerate(
        zip(model.widths, model.kernels, model.strides, model.paddings),
        start=1):
      groups = model.groups if i in (2, 4, 5) else 1
      layers += [nn.Conv2d(channels, width, k, s, p, groups=groups),
                 nn.ReLU(inplace=True)]
      if model.lrn and i <= 2:
        layers.append(_TowerLRN(groups))
      if i in (1, 2, 5):
        layers.append(nn.MaxPool2d(3, 2, model.pool_padding))
      channels = width
    self.features = nn.Sequential(*layers)
    self.pool = (nn.AdaptiveAvgPool2d(model.adaptive_pool)
                 if model.adaptive_pool else nn.Identity())
    self.dropout_placement = model.dropout_placement
    self.drop = nn.Dropout(model.dropout_rate)
    self.fc6 = nn.LazyLinear(model.hidden)
    self.fc7 = nn.Linear(model.hidden, model.hidden)
    self.fc8 = nn.Linear(model.hidden, model.num_classes)

  def forward(self, x):
    x = torch.flatten(self.pool(self.features(x)), 1)
    for fc in (self.fc6, self.fc7):
      if self.dropout_placement == 'torchvision':
        x = self.drop(x)
      x = torch.relu(fc(x))
      if self.dropout_placement == 'paper':
        x = self.drop(x)
    return self.fc8(x)


def make_step(model, batch_size: int, image_size: int, lr=0.01, momentum=0.9,
              weight_decay=5e-4, channels_last=False, compile_model=False,
              amp=False, device='cpu'):
  """(step(images_uint8_nchw, labels), twin): one SGD-momentum train step.

  The step does what alexnet_jax's does: uint8 to standardized float,
  forward, cross-entropy, backward, SGD with momentum and weight decay.
  """
  twin = AlexNetTwin(model).to(device)
  with torch.no_grad():  # Materialize fc6 (lazy) before the optimizer sees it.
    twin(torch.zeros(1, 3, image_size, image_size, device=device))
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  twin = twin.to(memory_format=memory_format)
  opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay)
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
  forward = torch.compile(twin) if compile_model else twin
  loss_fn = nn.CrossEntropyLoss()

  def step(images, labels):
    x = ((images.float() / 255. - mean) / std).contiguous(
        memory_format=memory_format)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.split(':')[0],
                        dtype=torch.bfloat16, enabled=amp):
      loss = loss_fn(forward(x), labels)
    loss.backward()
    opt.step()
    return loss

  twin.train()
  return step, twin
