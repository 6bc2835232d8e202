"""AlexNet-BN with LARS at batch 8K: the large-batch recipe of You, Gitman &
Ginsburg (2017), "Large Batch Training of Convolutional Networks".

Each value and where it comes from (the authors' nvcaffe solver files,
models/alexnet_bn/solver_8K.prototxt and solver_32k.prototxt, and the
paper):
  * model alexnet_bn: their models/alexnet_bn/train_val2 net (batch norm in
    place of LRN and before conv4/conv5, two towers);
  * batch 8192, 100 epochs (solver_8K: max_iter 15,600 at 156 iterations an
    epoch);
  * poly schedule, power 2, to 0 at the end (lr_policy "poly", power 2);
  * learning rate 10 (base_lr 10 at B=8K);
  * warmup 600 iterations = 3.85 epochs (rampup_interval 600; nvcaffe ramps
    quadratically from rampup_lr 1, optax linearly from 0);
  * trust coefficient 0.001 (larc_eta 0.001), momentum 0.9, weight decay
    5e-4 on kernels only (momentum, weight_decay);
  * the paper's data and test (as configs/imagenet.py): random 227 crops of
    the 256 store, flips; single centre crop at test, as their TEST net.
The authors' 8K solver runs LARC in its "clip" mode, min(lr, eta ||w||/||g||)
per layer; optax.lars (here) is the paper's scaling, lr * eta ||w||/||g||,
which their 32K solver uses (local_lr_auto). Batch 32K, as solver_32k:
  --config.batch_size=32768 --config.learning_rate=32 --config.warmup_epochs=10
"""

from configs import imagenet


def get_config():
  c = imagenet.get_config()
  c.model = 'alexnet_bn'
  c.init = ''  # alexnet_bn's own: Caffe's Gaussians, as the authors' net.
  c.optimizer = 'lars'
  c.batch_size = 8192
  c.eval_batch_size = 1024
  c.learning_rate = 10.0
  c.lars_trust_coefficient = 0.001
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.schedule = 'poly'
  c.poly_power = 2.0
  c.warmup_epochs = 600 / 156
  c.num_epochs = 100.0
  c.pca_lighting = 0.0  # Their data layer: crops and mirrors only.
  c.ten_crop = False
  c.eval_flip = False
  c.log_every_steps = 10
  c.checkpoint_every_steps = 500
  return c
