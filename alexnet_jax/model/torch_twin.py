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


class _Normalized(nn.Module):
  """uint8 images in, the twin's logits out: normalization inside the
  module, so torch.compile fuses it with the first convolution."""

  def __init__(self, twin, device, memory_format):
    super().__init__()
    self.twin, self.memory_format = twin, memory_format
    self.register_buffer('mean', torch.tensor(
        [0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
    self.register_buffer('std', torch.tensor(
        [0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))

  def forward(self, images):
    x = ((images.float() / 255. - self.mean) / self.std).contiguous(
        memory_format=self.memory_format)
    return self.twin(x)


def make_step(model, batch_size: int, image_size: int, lr=0.01, momentum=0.9,
              weight_decay=5e-4, channels_last=False, compile_model=False,
              amp=False, device='cpu', compile_mode=None, fused=False):
  """(step(images_uint8_nchw, labels), twin): one SGD-momentum train step.

  The step does what alexnet_jax's does: uint8 to standardized float,
  forward, cross-entropy, backward, SGD with momentum and weight decay.
  `compile_mode` (e.g. 'max-autotune', which on CUDA also captures the step
  in CUDA graphs) compiles the normalization, the model and the loss as one
  graph (its backward too); `fused`: the fused SGD kernel.
  """
  del batch_size  # The step takes any batch.
  twin = AlexNetTwin(model).to(device)
  with torch.no_grad():  # Materialize fc6 (lazy) before the optimizer sees it.
    twin(torch.zeros(1, 3, image_size, image_size, device=device))
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  twin = twin.to(memory_format=memory_format)
  opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay, fused=fused or None)
  net = _Normalized(twin, device, memory_format)
  loss_fn = nn.CrossEntropyLoss()
  if compile_mode:  # Normalization, forward and loss in one graph.
    whole = torch.compile(lambda images, labels: loss_fn(net(images), labels),
                          mode=compile_mode)
  forward = torch.compile(twin) if compile_model else twin

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.split(':')[0],
                        dtype=torch.bfloat16, enabled=amp):
      if compile_mode:
        loss = whole(images, labels)
      else:
        x = ((images.float() / 255. - net.mean) / net.std).contiguous(
            memory_format=memory_format)
        loss = loss_fn(forward(x), labels)
    loss.backward()
    opt.step()
    return loss

  twin.train()
  return step, twin
