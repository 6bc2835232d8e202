"""Every config field, with its default. Other configs start from here.

Durations may be given in epochs or steps (a step count > 0 wins); the trainer
turns them into steps in one place (`task/durations.py`, `Durations`).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  _model(c)
  _data(c)
  _optimization(c)
  _bookkeeping(c)
  _hardware(c)
  return c


def _model(c):
  """Model."""
  # One of models.MODELS: alexnet_paper (2012 two-tower net, 227x227),
  # alexnet_paper_one_tower, alexnet_torchvision (224x224), alexnet_cifar
  # (32x32), alexnet_tiny (tests only).
  c.model = 'alexnet_paper'
  # Initialization: '' keeps the preset's own; 'paper' (N(0, 0.01), biases 1
  # on conv2/4/5 and fc6/7), 'caffe' (bvlc_alexnet's), 'he' (variance scaling).
  c.init = ''
  # Fine-tuning: start from the parameters of another workdir's latest
  # checkpoint (a run, or torchvision's weights from alexnet_jax.convert),
  # with a fresh optimizer at step 0; fc8 starts afresh when the class count
  # differs. '' = off. Once this run has checkpoints, it resumes from them.
  c.init_from = ''
  c.dropout_rate = 0.5
  # Model input side in pixels; 0 = the images' own size. Images of another
  # size are resized on the device (bilinear), e.g. CIFAR 32 -> 227.
  c.image_size = 0
  # Compute in bfloat16 (parameters and optimizer state stay float32). Use on
  # GPU/TPU; on CPU bfloat16 convolutions are slower than float32.
  c.half_precision = False


def _data(c):
  """Data."""
  # Held in memory: 'cifar10', 'fake'. Streamed from files by Grain:
  # 'image_folder' (data_dir/train/<class>/*, data_dir/val/<class>/*),
  # 'imagenet2012' and 'imagenette' (TFDS, prepared as ArrayRecord), and
  # 'store' (data_dir: the paper's 256x256 store, written once by
  # `python -m alexnet_jax.prepare --store=DIR`).
  c.dataset = 'cifar10'
  # cifar10: a local copy (cifar-10-python.tar.gz or cifar-10-batches-py/);
  # empty loads it through TFDS. image_folder: the folder tree's root.
  # store: the store's directory (local or gs://).
  c.data_dir = ''
  c.tfds_data_dir = ''  # Empty: TFDS's default (~/tensorflow_datasets).
  # Fraction of the training images held out for validation (model selection,
  # the best checkpoint, the plateau schedule). 0 disables validation.
  c.val_fraction = 0.1
  c.val_examples = 0  # > 0: hold out this many instead (ImageNet: 10,000).
  # Image datasets: the shorter side is resized to resize_size and the
  # central square kept (the paper's stored 256x256 images); training takes a
  # random crop of the model's input side (image_size, or the preset's own:
  # 227 paper, 224 torchvision), or with random_resized_crop an
  # Inception-style crop (torchvision's recipe). Decoding runs in
  # data_workers Grain processes per process (0: in this process).
  c.resize_size = 256
  c.random_resized_crop = False
  c.data_workers = 4
  # Image datasets: who decodes. 'grain' (PIL in data_workers processes) or
  # 'dali' (NVIDIA DALI: pip install -r requirements-dali.txt) on the
  # dali_device, 'gpu' (nvJPEG) or 'cpu'. DALI reads the store (JPEG) and
  # image folders.
  c.input_pipeline = 'grain'
  c.dali_device = 'gpu'
  # An image that cannot be decoded is replaced (training) or left out
  # (evaluation), named once in the log; above this share of a split, the
  # run stops with one line instead.
  c.max_bad_fraction = 0.01
  # The paper's colour noise: std of the PCA lighting coefficients (0: off;
  # the paper: 0.1).
  c.pca_lighting = 0.0
  # How pixels become model input: 'standardize' ((x/255 - mean) / std) or
  # 'paper' (the centred raw RGB values, x - mean on the 0..255 scale).
  c.input_scaling = 'standardize'
  # Random crop after zero-padding by this many pixels (0: off); random flip.
  c.crop_padding = 4
  c.random_flip = True
  # Evaluate on each image and its horizontal reflection, averaging the
  # softmax, as the paper's test procedure does (Sec. 4.1; its 10 crops are
  # for ImageNet-sized images).
  c.eval_flip = True
  # Image datasets: the paper's 10-crop test (the four corners and the centre
  # of the 256x256 image, each also mirrored; softmax averaged). Off: the
  # centre crop (and its mirror with eval_flip).
  c.ten_crop = False
  # Shapes of the 'fake' dataset.
  c.num_classes = 1000  # For 'fake' only; cifar10 has 10.
  c.fake_image_size = 227
  c.fake_num_train = 512
  c.fake_num_test = 128


def _optimization(c):
  """Optimization: SGD with momentum in the paper's update rule."""
  # v <- momentum * v - weight_decay * lr * w - lr * g;  w <- w + v
  # 'sgd' (the paper's), or 'lars' (large batches: each kernel's step scaled
  # by lars_trust_coefficient * ||w|| / ||g + wd * w||, lars_eps added below;
  # biases get neither that nor weight decay).
  c.optimizer = 'sgd'
  c.lars_trust_coefficient = 0.001
  c.lars_eps = 0.0
  c.batch_size = 128  # Global, over all devices; must divide by device count.
  # Global; rounded up to a multiple of the device count; the split's last
  # batch is padded and masked, so every example counts once.
  c.eval_batch_size = 500
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.weight_decay = 5e-4  # On conv/FC kernels; biases are not decayed.
  # 'plateau': the paper's /10 when validation error stops improving,
  # `plateau_reductions` times; 'step': x`lr_step_factor` at each of
  # `lr_step_epochs`; 'cosine': linear warmup then cosine to 0; 'poly':
  # linear warmup then (1 - t)^poly_power to 0 (the LARS recipe); 'constant'.
  c.schedule = 'plateau'
  c.warmup_epochs = 0.0
  c.lr_step_epochs = (30, 60, 80)
  c.lr_step_factor = 0.1
  c.plateau_patience = 5  # Evaluations without improvement before /10.
  c.plateau_reductions = 3
  c.poly_power = 2.0
  c.label_smoothing = 0.0


def _bookkeeping(c):
  """Duration and bookkeeping."""
  c.num_epochs = 90.0  # The paper trained "roughly 90 cycles".
  c.num_steps = -1  # > 0 overrides num_epochs.
  c.eval_every_epochs = 1.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000  # Also after every evaluation and at the end.
  # Data held on the device (CIFAR-10, fake): up to this many train steps in
  # one compiled call, the batches gathered on the device; a chunk ends
  # wherever a log, an evaluation or a save is due. 1: a call per step; 0:
  # by platform (1 on CPUs, 16 on GPUs and TPUs; docs/speed.md says why).
  # Streamed data takes one step per batch.
  c.steps_per_call = 0
  c.keep_checkpoints = 3  # The latest K; the best by val top-1 is kept too.
  c.seed = 0
  # Many runs in one process, trained by one compiled step (docs/runs.md):
  # `runs` seeds (seed, seed+1, ...) for each point of `sweep`, e.g.
  # 'learning_rate=0.005,0.01,0.02 weight_decay=0,5e-4' (learning_rate,
  # weight_decay, momentum, dropout_rate), its lists crossed ('cross') or
  # zipped ('zip'). Data held on the device only (CIFAR-10, fake). A stack
  # that would not fit the device's memory is refused before it starts,
  # with the largest that fits; memory_limit_gib > 0 sets the memory it may
  # take per device (0: the device's free memory; on CPUs the host's).
  c.runs = 1
  c.sweep = ''
  c.sweep_mode = 'cross'
  c.memory_limit_gib = 0.
  # Spreads a stack over devices: this many groups of devices, each training
  # runs / runs_parallelism of the runs, data-parallel within the group
  # (the mesh's 'runs' axis). Must divide the runs and the device count.
  c.runs_parallelism = 1
  # > 0: write an XLA profile of this many steps, a few steps after the run
  # (or its resume) starts, into the workdir: TensorBoard's profile plugin
  # reads it (`tensorboard --logdir WORKDIR`, tensorboard-plugin-profile).
  c.profile_steps = 0


def _hardware(c):
  """Hardware and parallelism (docs/clusters.md)."""
  # What the run trains on: 'auto' (whatever JAX finds; an accelerator that
  # failed to start is said in one line), or 'gpu', 'tpu', 'cpu': anything
  # else found is an error before anything is written. Launchers and
  # manifests set it for their hardware, so a broken driver never means a
  # silent run on the CPU.
  c.platform = 'auto'
  # JAX's persistent compilation cache: '' (the default place,
  # ~/.cache/alexnet_jax/jax), a folder or gs:// URI, or 'off'. A resumed or
  # repeated run loads its compiled programs instead of compiling them.
  c.compilation_cache = ''
  # Devices per FC-layer group: > 1 splits fc6/fc7/fc8 weights over a 'model'
  # mesh axis (Krizhevsky's "one weird trick"); convolutions stay
  # data-parallel on every device. Must divide the device count.
  c.model_parallelism = 1
  # 2: the paper's own split (alexnet_paper): each tower of the two-tower net
  # on its own device of a 'tower' pair, exchanging activations only before
  # conv3, fc6, fc7 and fc8 (model/towers.py); the batch is split over the
  # pairs. 1: both towers on every device.
  c.tower_parallelism = 1
  # Shards of the training set; the global batch takes batch_size/data_shards
  # examples from each, and each process keeps only its shards. 0: one per
  # process. Fix it (to a multiple of every process count you will use) to get
  # the same batches, and so the same run, on 1, 2, 4, ... processes.
  c.data_shards = 0
