"""The main job: AlexNet's CIFAR form on CIFAR-10, fast on a CPU.

Small batches (32) give the small dataset many updates per epoch and cost the
CPU no throughput at these widths; one warmup epoch, then cosine decay; label
smoothing 0.1; the paper's dropout 0.5, weight decay 5e-4, momentum 0.9 and
test-time reflection averaging. README "Results" and docs/training.md have the measurements.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = 'alexnet_cifar'
  c.dataset = 'cifar10'
  c.batch_size = 32
  c.learning_rate = 0.01
  c.schedule = 'cosine'
  c.warmup_epochs = 1.0
  c.label_smoothing = 0.1
  c.num_epochs = 45.0
  c.log_every_steps = 50
  return c
