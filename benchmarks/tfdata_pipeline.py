"""The streaming pipeline's training augmentation written with tf.data.

For side-by-side speed only (benchmarks/image_pipeline.py): the same files
and the same output as `streaming.TrainExample` without the Inception crop:
JPEG decode at reduced size (libjpeg's DCT scaling when the shorter side is
about twice 256 or more, as `images.decode` does through PIL's draft),
shorter side to 256 (bilinear, antialiased), the central 256x256, a random
227x227 crop, uint8 out, batched. Written the usual tf.data way: resize the
whole image, then crop (`tf.image.resize` takes no source box; PIL's resize,
which `images.resized_window` uses, does, so ours resamples only the
window). The decode gives PIL's pixels exactly; the resizers round
differently (a level or two); the window is the same.
`threads` is the map's parallelism and the size of tf.data's private thread
pool, each op single-threaded, so one thread is one core's worth of work
(tf.data's own prefetch and runner threads aside, which do little).
"""

from alexnet_jax.runtime import tf_cpu


def _decode_reduced(data, min_side: int):
  """decode_jpeg at the DCT scale PIL's `draft` picks for `images.decode`
  (the largest of 8, 4, 2, 1 that keeps the image at least the requested
  size), with libjpeg's accurate IDCT as PIL's: the same pixels."""
  tf = tf_cpu.tensorflow()
  shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.float64)
  h, w = shape[0], shape[1]
  scale = tf.minimum(h, w) / min_side  # float64, as Python's float.
  # The size images.decode asks for, and PIL's choice of scale for it.
  want_w, want_h = tf.floor(w / scale) + 1, tf.floor(h / scale) + 1
  k = tf.minimum(tf.floor(w / want_w), tf.floor(h / want_h))
  branch = tf.where(k >= 8, 0, tf.where(k >= 4, 1, tf.where(k >= 2, 2, 3)))
  return tf.switch_case(branch, [
      lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r,
                                    dct_method='INTEGER_ACCURATE')
      for r in (8, 4, 2, 1)])


def train_batches(paths, labels, *, seed: int, batch: int, threads: int,
                  resize_size: int = 256, crop_size: int = 227):
  """A tf.data.Dataset of (uint8 [batch, crop, crop, 3], int32 [batch]),
  reshuffled every epoch, endless."""
  tf = tf_cpu.tensorflow()

  def example(path, label):
    image = _decode_reduced(tf.io.read_file(path), resize_size)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(h, w)
    new_h = h * resize_size // short
    new_w = w * resize_size // short
    image = tf.image.resize(image, (new_h, new_w), method='bilinear',
                            antialias=True)
    # Halves round to even, as Python's round() in images.center_square.
    top = tf.cast(tf.round((new_h - resize_size) / 2), tf.int32)
    left = tf.cast(tf.round((new_w - resize_size) / 2), tf.int32)
    square = image[top:top + resize_size, left:left + resize_size]
    crop = tf.image.random_crop(square, (crop_size, crop_size, 3))
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8), label

  ds = tf.data.Dataset.from_tensor_slices(
      (list(paths), tf.constant(labels, tf.int32)))
  ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().map(example, num_parallel_calls=threads)
  ds = ds.batch(batch, drop_remainder=True).prefetch(2)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = True
  return ds.with_options(options)
