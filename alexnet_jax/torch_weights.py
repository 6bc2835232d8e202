"""PyTorch state dicts -> this package's Flax params (torchvision's AlexNet first).

Layouts differ in two places: conv kernels are OIHW in PyTorch and HWIO in
Flax, and fc6 reads the pooled maps flattened as C,H,W in PyTorch but H,W,C
here (NHWC), so its input rows are permuted.
"""

import numpy as np

# torchvision.models.alexnet's module indices, by our layer names.
TORCHVISION_LAYERS = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
    'conv4': 'features.8', 'conv5': 'features.10',
    'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6',
}


def params_from_torch(state_dict, layers=None, pool_hw=(6, 6)):
  """Flax params for `models.AlexNet` from a PyTorch AlexNet state dict.

  Args:
    state_dict: name -> tensor or array (torch tensors are converted).
    layers: our layer name -> the PyTorch module prefix; torchvision's default.
    pool_hw: spatial size of the maps fc6 reads (6x6 for 224/227 input).
  """
  layers = layers or TORCHVISION_LAYERS

  def get(key):
    value = state_dict[key]
    if hasattr(value, 'detach'):
      value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)

  params = {}
  for name, prefix in layers.items():
    w, b = get(prefix + '.weight'), get(prefix + '.bias')
    if name.startswith('conv'):
      kernel = w.transpose(2, 3, 1, 0)
    elif name == 'fc6':
      h, wd = pool_hw
      out, fan_in = w.shape
      kernel = (w.reshape(out, fan_in // (h * wd), h, wd)
                .transpose(2, 3, 1, 0).reshape(fan_in, out))
    else:
      kernel = w.T
    params[name] = {'kernel': kernel, 'bias': b}
  return params
