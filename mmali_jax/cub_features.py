"""Computes the CUB image features: python -m mmali_jax.cub_features

  python -m mmali_jax.cub_features --images_dir=CUB_200_2011/images \\
      --split_dir=<data_dir>/downloads/manual/cub/train [--backend=keras --weights=FILE]

For every entry of <split_dir>/filenames.pickle (the StackGAN birds split), in that order, the
image <images_dir>/<filename>.jpg is converted to RGB, resized to 224x224 (no crop) and passed
through an ImageNet-pretrained ResNet-101 without its classifier; the 2048-d global-average-pool
output is written as float32 [N, 2048] to <split_dir>/image_features_resnet101.npy (--out).

Backends (docs/algorithm.md §8.5):
- torchvision (when installed; the paper's features): torchvision's resnet101 with its ImageNet
  weights (IMAGENET1K_V1, the former pretrained=True), eval mode, pixels scaled to [0, 1] and
  NOT mean/std-normalised, as the authors' make_cub_img_ft.py. --weights: a state-dict file
  (resnet101-63fe2227.pth); default: torchvision's cache/download.
- keras: keras.applications.ResNet101(include_top=False, pooling='avg'), whose ImageNet weights
  are a different network (the original Caffe ResNet-101 converted, not torchvision's), fed with
  its own preprocessing (RGB->BGR, ImageNet mean subtracted, 0-255 scale). Its features are
  therefore not interchangeable with the paper's; a model trained on one set must be evaluated
  on the same set. --weights: resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5 (from
  storage.googleapis.com/tensorflow/keras-applications/resnet/), default: Keras's cache
  (~/.keras/models/) or download; 'none': random weights (tests only).
"""
import os
import sys

from absl import app
from absl import flags
import numpy as np

IMAGE_SIZE = 224
BACKENDS = ('torchvision', 'keras')
KERAS_WEIGHTS = 'resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5'
TORCHVISION_WEIGHTS = 'resnet101-63fe2227.pth'


def default_backend():
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
    del torchvision
    return 'torchvision'
  except ImportError:
    return 'keras'


def load_image(path):
  """RGB, resized to 224x224 with bilinear interpolation (torchvision's Resize((224, 224)) on a
  PIL image), as uint8 [224, 224, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image = image.convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(image, np.uint8)


def image_paths(images_dir, split_dir):
  """The image of every entry of <split_dir>/filenames.pickle, in its order; an error names the
  missing ones."""
  from mmali_jax.data import cub  # pylint: disable=g-import-not-at-top
  names = cub.read_pickle(os.path.join(split_dir, 'filenames.pickle'))
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  paths = [os.path.join(images_dir, n if n.endswith('.jpg') else n + '.jpg') for n in names]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
        f'{len(missing)} of the {len(paths)} images of {split_dir}/filenames.pickle are not in '
        f'{images_dir} (e.g. {missing[0]}). --images_dir must be the images/ folder of '
        'CUB_200_2011.')
  return paths


def load_model(backend, weights=None):
  """fn(uint8 images [B, 224, 224, 3]) -> float32 features [B, 2048]."""
  if backend == 'keras':
    import keras  # pylint: disable=g-import-not-at-top
    if weights in (None, ''):
      weights = 'imagenet'
    elif weights.lower() == 'none':
      weights = None
    model = keras.applications.ResNet101(include_top=False, pooling='avg', weights=weights,
                                         input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    preprocess = keras.applications.resnet.preprocess_input
    return lambda x: np.asarray(model(preprocess(x.astype(np.float32)), training=False),
                                np.float32)
  if backend == 'torchvision':
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    if weights:
      net = torchvision.models.resnet101()
      net.load_state_dict(torch.load(weights, map_location='cpu'))
    else:
      net = torchvision.models.resnet101(weights='IMAGENET1K_V1')
    trunk = torch.nn.Sequential(*list(net.children())[:-1]).eval()

    def apply(x):
      # ToTensor: [0, 1], channels first; no normalisation (as the authors' script).
      t = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
      with torch.no_grad():
        return trunk(t).flatten(1).numpy().astype(np.float32)

    return apply
  raise ValueError(f'--backend={backend!r}; choose one of {BACKENDS}.')


def compute_features(model, paths, batch_size=32, log_every=20):
  """float32 [N, 2048]: row i holds the features of paths[i]."""
  out = []
  for start in range(0, len(paths), batch_size):
    batch = np.stack([load_image(p) for p in paths[start:start + batch_size]])
    out.append(model(batch))
    if log_every and (start // batch_size) % log_every == 0:
      print(f'{start + len(batch)}/{len(paths)} images', file=sys.stderr)
  return np.concatenate(out).astype(np.float32)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from mmali_jax.data import cub  # pylint: disable=g-import-not-at-top
  backend = FLAGS.backend or default_backend()
  out = FLAGS.out or os.path.join(FLAGS.split_dir, cub.IMAGE_FEATURES_FILE)
  try:
    paths = image_paths(FLAGS.images_dir, FLAGS.split_dir)
  except FileNotFoundError as err:
    raise SystemExit(f'Error: {err}') from None
  print(f'{len(paths)} images, ResNet-101 features with the {backend} backend.', file=sys.stderr)
  try:
    model = load_model(backend, FLAGS.weights)
  except Exception as err:  # pylint: disable=broad-except
    # Offline, Keras and torchvision fail to download their weights with long tracebacks.
    wanted = {'keras': KERAS_WEIGHTS, 'torchvision': TORCHVISION_WEIGHTS}[backend]
    reason = str(err).splitlines()[0][:300] if str(err) else ''
    raise SystemExit(f'Error: cannot load the ResNet-101 weights for the {backend} backend '
                     f'({type(err).__name__}: {reason}). Pass --weights=<path to {wanted}>.'
                     ) from None
  features = compute_features(model, paths, FLAGS.batch_size)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.save(out, features)
  print(f'Wrote {out}: {features.shape[0]} x {features.shape[1]} float32.')


FLAGS = flags.FLAGS
if __name__ == '__main__':
  flags.DEFINE_string('images_dir', None, 'The images/ folder of CUB_200_2011.')
  flags.DEFINE_string('split_dir', None, 'A StackGAN birds split folder (with filenames.pickle).')
  flags.DEFINE_string('out', None, 'Default: <split_dir>/image_features_resnet101.npy.')
  flags.DEFINE_enum('backend', None, list(BACKENDS),
                    'Default: torchvision when installed (the paper\'s features), else keras.')
  flags.DEFINE_string('weights', None, 'The network weights file (see the module docstring).')
  flags.DEFINE_integer('batch_size', 32, 'Images per forward pass.')
  flags.mark_flags_as_required(['images_dir', 'split_dir'])
  app.run(main)
