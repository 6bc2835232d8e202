"""The data path: the local archive on real CIFAR-10 images (folder and
tarball), TFDS under mock_data, bad archives, the validation hold-out, and
on-device augmentation."""

import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.data import augment
from alexnet_jax.data import cifar
from alexnet_jax.data import in_memory
from alexnet_jax.data import registry
from alexnet_jax.errors import DataError
from tests import cli
from tests.conftest import REPO


def read_raw(path):
  with open(path, 'rb') as f:
    return pickle.load(f, encoding='latin1')


def test_local_folder_loads_real_images(cifar_dir):
  train, test = cifar.load_cifar10_archive(cifar_dir)
  assert train.images.shape == (5085, 32, 32, 3)
  assert test.images.shape == (1017, 32, 32, 3)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert set(np.unique(train.labels)) == set(range(10))
  counts = np.bincount(test.labels, minlength=10)
  assert counts.min() >= 80 and counts.max() <= 120
  # Channel planes decoded independently of the loader: first image of batch 1.
  raw = read_raw(os.path.join(cifar_dir, 'data_batch_1'))
  first = np.asarray(raw['data'][0], np.uint8)
  np.testing.assert_array_equal(train.images[0, :, :, 0].ravel(), first[:1024])
  np.testing.assert_array_equal(train.images[0, :, :, 2].ravel(), first[2048:])
  assert train.labels[0] == raw['labels'][0]
  # Real photos, not noise: neighbouring pixels are strongly correlated.
  x = train.images[:200].astype(np.float32)
  corr = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
  assert corr > 0.8


def test_tarball_and_parent_folder_give_the_same_arrays(cifar_dir, tmp_path):
  tarball = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(tarball, 'w:gz') as tar:
    tar.add(cifar_dir, arcname='cifar-10-batches-py')
  want_train, want_test = cifar.load_cifar10_archive(cifar_dir)
  for source in (tarball, tmp_path):  # The tarball, and a folder holding it.
    train, test = cifar.load_cifar10_archive(str(source))
    np.testing.assert_array_equal(train.images, want_train.images)
    np.testing.assert_array_equal(train.labels, want_train.labels)
    np.testing.assert_array_equal(test.images, want_test.images)
  parent = tmp_path / 'extracted'
  shutil.copytree(cifar_dir, parent / 'cifar-10-batches-py')
  train, _ = cifar.load_cifar10_archive(str(parent))
  np.testing.assert_array_equal(train.labels, want_train.labels)


def write_batches(folder, sizes, seed=0):
  """A CIFAR-format archive with `sizes[i]` images in batch i (test last)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  for name, n in zip(names, sizes):
    with open(os.path.join(folder, name), 'wb') as f:
      pickle.dump({'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   'labels': list(rng.integers(0, 10, n))}, f)


def test_any_number_of_images_per_batch_file(tmp_path):
  write_batches(tmp_path, [3, 1, 4, 1, 5, 9])
  train, test = cifar.load_cifar10_archive(str(tmp_path))
  assert len(train) == 14 and len(test) == 9


@pytest.mark.parametrize('case, match', [
    ('missing', 'does not exist'),
    ('empty_dir', 'not a CIFAR-10 archive: missing data_batch_1'),
    ('not_tar', 'not a CIFAR-10 archive'),
    ('truncated', 'data_batch_3 is truncated or corrupt'),
    ('truncated_tar', 'truncated or corrupt tarball'),
])
def test_bad_archives_name_the_problem(tmp_path, case, match):
  path = tmp_path / 'data'
  if case == 'empty_dir':
    path.mkdir()
  elif case == 'not_tar':
    path.write_text('hello')
  elif case == 'truncated':
    write_batches(path, [5] * 6)
    f = path / 'data_batch_3'
    f.write_bytes(f.read_bytes()[:1000])
  elif case == 'truncated_tar':
    write_batches(tmp_path / 'src', [50] * 6)
    with tarfile.open(tmp_path / 'a.tar.gz', 'w:gz') as tar:
      tar.add(tmp_path / 'src', arcname='cifar-10-batches-py')
    data = (tmp_path / 'a.tar.gz').read_bytes()
    path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match=match) as err:
    cifar.load_cifar10_archive(str(path))
  assert '\n' not in str(err.value)


def test_tfds_path_under_mock_data(tmp_path, cifar_dir):
  """TFDS's cifar10, mocked to hold the real subset (distinct train and test
  splits, 5,085 training images: two of the loader's 4,096-image batches):
  the loader hands back every record of each split, in TFDS's order, with
  its label, as uint8 images and int32 labels."""
  tfds = pytest.importorskip('tensorflow_datasets')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data import tfds as tfds_lib  # pylint: disable=g-import-not-at-top
  train_ref, test_ref = cifar.load_cifar10_archive(cifar_dir)
  served = {'train': train_ref, 'test': test_ref}

  def as_dataset(self, split, *args, **kwargs):  # pylint: disable=unused-argument
    data = served[str(split)]
    return tf.data.Dataset.from_tensor_slices({
        'image': data.images, 'label': data.labels.astype(np.int64),
        'id': [f'{split}_{i}'.encode() for i in range(len(data.labels))]})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=None):
    train, test = tfds_lib.load_cifar10(str(tmp_path))
  assert len(train_ref.labels) > 4096  # More than one batch of the loader.
  for got, want in ((train, train_ref), (test, test_ref)):
    assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)


def test_tfds_without_network_says_how_to_use_a_local_archive(
    tmp_path, subprocess_env):
  """The real TFDS path in a network namespace of its own (no route to
  anywhere), so the offline branch runs whatever this machine can reach."""
  pytest.importorskip('tensorflow_datasets')
  probe = subprocess.run(['unshare', '-rn', 'true'], capture_output=True)
  if probe.returncode != 0:
    pytest.skip('cannot create a network namespace here (unshare -rn): '
                + probe.stderr.decode()[-200:])
  workdir = tmp_path / 'w'
  result = subprocess.run(
      ['unshare', '-rn', sys.executable, '-m', 'alexnet_jax.main',
       '--config=configs/cifar10.py', f'--workdir={workdir}',
       f'--config.tfds_data_dir={tmp_path / "tfds"}'],
      cwd=REPO, env=subprocess_env, capture_output=True, text=True,
      timeout=300)
  # Fails fast, with no retry loop: the line is the reachability probe's
  # (which names the host), made before TFDS's downloader ever starts, and
  # the downloader left nothing behind.
  line = cli.assert_one_error_line(result, 'www.cs.toronto.edu is unreachable')
  assert '--config.data_dir=' in line
  assert not list((tmp_path / 'tfds').rglob('*download*'))
  assert not workdir.exists()


@pytest.mark.slow
def test_tfds_is_prepared_by_process_0_alone(tmp_path, subprocess_env):
  """Two processes, one TFDS data dir, no network (a namespace with only
  loopback, for the coordinator): process 0 alone tries to prepare cifar10
  and says why it cannot; process 1 waits for it and says so, untried."""
  pytest.importorskip('tensorflow_datasets')
  probe = subprocess.run(['unshare', '-rn', 'ip', 'link', 'set', 'lo', 'up'],
                         capture_output=True)
  if probe.returncode != 0:
    pytest.skip('cannot create a network namespace with loopback here: '
                + probe.stderr.decode()[-200:])
  logs = tmp_path / 'logs'
  env = dict(subprocess_env, PYTHON=sys.executable, LOGDIR=str(logs))
  result = subprocess.run(
      ['unshare', '-rn', 'bash', '-c',
       'ip link set lo up && exec bash launch/local_multiprocess.sh "$@"', '-',
       '2', '--config=configs/cifar10.py', f'--workdir={tmp_path / "w"}',
       f'--config.tfds_data_dir={tmp_path / "tfds"}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  # Process 0's line, then process 1's log, which the launcher shows.
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert [e for e in errors if 'unreachable' in e] == errors[:1], errors
  other = [l for l in (logs / 'process_1.log').read_text().splitlines()
           if l.startswith('error:')]
  assert other == ['error: process 0 could not prepare TFDS cifar10 (its '
                   'error says why); this process did not try']
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_hostile_pickle_cannot_run_code(tmp_path):
  """A batch file whose unpickling would call os.system is refused before
  anything runs; the real files still load (test_local_folder_...)."""
  marker = tmp_path / 'pwned'

  class Exploit:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  write_batches(tmp_path / 'data', [2] * 6)
  with open(tmp_path / 'data' / 'data_batch_4', 'wb') as f:
    pickle.dump({'data': Exploit(), 'labels': [0]}, f)
  with pytest.raises(DataError, match='data_batch_4 asks to load the '
                     'Python object posix.system'):
    cifar.load_cifar10_archive(str(tmp_path / 'data'))
  assert not marker.exists()
  # The same file through plain pickle really would have run it.
  with open(tmp_path / 'data' / 'data_batch_4', 'rb') as f:
    pickle.load(f)
  assert marker.exists()


def cifar_data(cifar_dir, val_fraction=0.1, val_examples=0):
  """The host splits training holds (`build.host_data`'s loader)."""
  return in_memory.load_dataset(
      registry.resolve('cifar10', data_dir=cifar_dir),
      val_examples=val_examples, val_fraction=val_fraction)


def test_validation_hold_out_is_fixed_disjoint_and_sized(cifar_dir):
  train, _ = cifar.load_cifar10_archive(cifar_dir)
  data = cifar_data(cifar_dir)
  tr, val = data.train, data.val
  assert len(val) == 508 and len(tr) == 5085 - 508
  again = cifar_data(cifar_dir)
  np.testing.assert_array_equal(val.labels, again.val.labels)
  # Disjoint and complete: image bytes of both splits add up to the original.
  key = lambda imgs: {im.tobytes() for im in imgs}
  assert not key(tr.images) & key(val.images)
  assert key(tr.images) | key(val.images) == key(train.images)
  assert cifar_data(cifar_dir, val_fraction=0.).val is None


def test_val_examples_holds_out_that_many_for_every_dataset(cifar_dir):
  """One hold-out rule (the registry's) for in-memory and streamed data."""
  data = cifar_data(cifar_dir, val_examples=300)
  assert len(data.val) == 300 and len(data.train) == 5085 - 300
  train_idx, val_idx = registry.hold_out(5085, 300)
  np.testing.assert_array_equal(data.val.labels,
                                cifar.load_cifar10_archive(cifar_dir)[0]
                                .labels[val_idx])
  with pytest.raises(DataError, match='cannot hold out 5085 validation'):
    cifar_data(cifar_dir, val_examples=5085)


def test_load_dataset_fake_and_unknown():
  fake = registry.resolve('fake', num_classes=7, fake_image_size=40)
  data = in_memory.load_dataset(fake, val_examples=0, val_fraction=0.25,
                                fake_num_train=20, fake_num_test=6)
  assert data.train.images.shape == (15, 40, 40, 3)
  assert len(data.val) == 5 and len(data.test) == 6 and data.num_classes == 7
  with pytest.raises(DataError, match="unknown dataset 'imagenet42'.*cifar10"):
    registry.resolve('imagenet42')


def test_epoch_permutations_are_a_pure_function_of_seed_and_epoch():
  key = jax.random.PRNGKey(3)
  a = in_memory.epoch_permutations(key, 4, 2, 50)
  assert a.shape == (2, 50)
  np.testing.assert_array_equal(a, in_memory.epoch_permutations(key, 4, 2, 50))
  for row in np.asarray(a):
    assert sorted(row.tolist()) == list(range(50))
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a, in_memory.epoch_permutations(key, 5, 2, 50))
  assert not np.array_equal(a, in_memory.epoch_permutations(jax.random.PRNGKey(4), 4,
                                                     2, 50))


def test_shards_give_the_same_batches_for_any_process_count():
  """4 shards of 10 examples, batch 8: the examples of each global batch do
  not depend on whether 1, 2 or 4 processes hold the shards."""
  train = registry.Split(np.zeros((43, 1, 1, 1), np.uint8),
                   np.arange(43, dtype=np.int32))  # Label = example id.
  perms = in_memory.epoch_permutations(jax.random.PRNGKey(0), 0, 4, 10)
  batches = {}
  for procs in (1, 2, 4):
    rows = []
    for p in range(procs):
      share, per_shard = in_memory.process_share(train, 4, p, procs)
      assert per_shard == 10 and len(share) == 40 // procs
      idx = np.asarray(in_memory.batch_indices(perms, 1, 8, procs))
      mine = slice(p * 8 // procs, (p + 1) * 8 // procs)
      rows.append(share.labels[idx[mine]])
    batches[procs] = np.concatenate(rows)
  np.testing.assert_array_equal(batches[1], batches[2])
  np.testing.assert_array_equal(batches[1], batches[4])
  # Two examples from each shard, none from the dropped remainder (40..42).
  assert sorted(batches[1] // 10) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_an_epochs_batches_take_every_example_once():
  """4 shards of 10, batch 8: the epoch's 5 batches together are the 40
  examples of the shards, each once; on 1, 2 or 4 processes alike."""
  perms = in_memory.epoch_permutations(jax.random.PRNGKey(1), 3, 4, 10)
  for procs in (1, 2, 4):
    taken = []
    for step in range(5):
      idx = np.asarray(in_memory.batch_indices(perms, step, 8, procs))
      for p in range(procs):  # Process p's share starts at shard p*4/procs.
        mine = idx[p * 8 // procs:(p + 1) * 8 // procs]
        taken += (mine + p * (40 // procs)).tolist()
    assert sorted(taken) == list(range(40)), procs


def test_crop_flip_moves_pixels_only_and_is_deterministic(cifar_dir):
  train, _ = cifar.load_cifar10_archive(cifar_dir)
  images = jnp.asarray(train.images[:64])
  out = augment.random_crop_flip(jax.random.PRNGKey(0), images, pad=4)
  again = augment.random_crop_flip(jax.random.PRNGKey(0), images, pad=4)
  other = augment.random_crop_flip(jax.random.PRNGKey(1), images, pad=4)
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)
  assert out.dtype == jnp.uint8 and out.shape == images.shape
  # Every output is its own input shifted by (dy, dx) in [-4, 4], maybe
  # mirrored, with zeros shifted in: the content (and so the label) is kept.
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  out = np.asarray(out)
  for i in range(len(images)):
    found = False
    for dy in range(9):
      for dx in range(9):
        window = padded[i, dy:dy + 32, dx:dx + 32]
        if (np.array_equal(out[i], window) or
            np.array_equal(out[i], window[:, ::-1])):
          found = True
    assert found, i
  flipped = sum(not np.array_equal(out[i], padded[i, 4:36, 4:36])
                for i in range(len(images)))
  assert flipped > 0


def test_no_flip_no_pad_is_identity():
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.uint8).reshape(2, 8, 8, 3)
  out = augment.random_crop_flip(jax.random.PRNGKey(0), images, pad=0, flip=False)
  np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize('side, to', [(32, 227), (256, 227), (40, 32)])
def test_normalize_standardizes_and_resizes(side, to):
  """A real photo (scikit-image's astronaut at `side`) against PIL: its
  bilinear resize of each channel in float ('F' mode; antialiased when
  shrinking, as JAX's), then (x - mean) / std in NumPy.

  Tolerance: both resample with the same triangle kernel, so they differ by
  rounding alone. JAX places the kernel in float32, the sample position
  (about `side` pixels) off by a few units of roundoff u; a position error
  e moves a value by at most e times the largest step between neighbouring
  pixels, on each of the two axes; the weighted sum and the standardization
  add a few roundings of values <= 1. Dividing by the smallest std scales
  it all. That holds wherever float32 is IEEE (any x86 or ARM CPU, GPUs);
  a wrong method, offset or antialias setting is off by 1e-2 and more."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  skimage_data = pytest.importorskip('skimage.data')
  photo = np.asarray(Image.fromarray(skimage_data.astronaut()).resize(
      (side, side), Image.BICUBIC))
  x = np.asarray(augment.normalize(jnp.asarray(photo[None]),
                                   registry.CIFAR10_MEAN, registry.CIFAR10_STD,
                                   image_size=to))
  assert x.shape == (1, to, to, 3) and x.dtype == np.float32
  unit = photo.astype(np.float32) / 255
  resized = np.stack([np.asarray(Image.fromarray(unit[..., c], 'F').resize(
      (to, to), Image.BILINEAR)) for c in range(3)], -1)
  want = ((resized - np.float32(registry.CIFAR10_MEAN)) /
          np.float32(registry.CIFAR10_STD))
  u = np.finfo(np.float32).eps / 2
  step = max(np.abs(np.diff(unit, axis=a)).max() for a in (0, 1))
  atol = (2 * 8 * u * side * step + 16 * u) / min(registry.CIFAR10_STD)
  np.testing.assert_allclose(x[0], want, rtol=0, atol=atol)
