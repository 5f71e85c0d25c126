"""Scores two image files with a trained model and draws them side by side.

    python -m siamese_jax.compare --workdir=DIR --image_a=a.png --image_b=b.png [--out=comparison.png]

The files (PNG, JPEG, anything Pillow reads) become model inputs the way the run's dataset loader makes
its own: squared to data.image_size, grayscale or RGB, and inverted for a dataset stored dark on light
(Omniglot), so that the background is 0 as in training. Prints the similarity (higher = more alike; for a
logit head also P(same), its sigmoid) and writes the two inputs as the model sees them.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from absl import app, flags
from PIL import Image, UnidentifiedImageError

from siamese_jax import cli, evaluate, inference, plots
from siamese_jax.errors import UserError

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A training workdir (holding config.json and checkpoints/).', flag_values=FLAGS)
flags.DEFINE_string('image_a', None, 'First image file.', flag_values=FLAGS)
flags.DEFINE_string('image_b', None, 'Second image file.', flag_values=FLAGS)
flags.DEFINE_string('out', 'comparison.png', 'Where to write the picture of the pair (PNG).', flag_values=FLAGS)
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to use.', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'image_a', 'image_b'], flag_values=FLAGS)


@dataclasses.dataclass(frozen=True)
class InputForm:
  """How a dataset's image files become model inputs."""

  size: int | None  # side of the square input
  channels: int  # 1 (grayscale) or 3 (RGB)
  invert: bool  # the files are dark on light and are inverted to put the background at 0
  shrink: Image.Resampling = Image.Resampling.BILINEAR  # the loader's filter when making images smaller


# Per dataset: what its loader uses when the config leaves data.image_size / data.channels unset, whether
# its files are dark on light, and the filter it shrinks them with. Any other dataset: data.image_size,
# data.channels (else 1), no inversion, bilinear.
_DATASET_FORMS = {
    'omniglot': InputForm(size=105, channels=1, invert=True, shrink=Image.Resampling.BOX),
    'mnist': InputForm(size=28, channels=1, invert=False),
    'malaria': InputForm(size=50, channels=1, invert=False),
    'cifar100': InputForm(size=32, channels=3, invert=False),
}


def input_form(data_config) -> InputForm:
  """The input form of a run's model, from the `data` block of the config it was trained with."""
  default = _DATASET_FORMS.get(data_config.name, InputForm(size=None, channels=1, invert=False))
  form = dataclasses.replace(default, size=data_config.get('image_size') or default.size,
                             channels=data_config.get('channels') or default.channels)
  if not form.size:
    raise UserError(f'the run\'s config sets no data.image_size for dataset {data_config.name!r}')
  return form


def read_image(path: str) -> Image.Image:
  """The decoded image file at `path`; a missing or unreadable file is a UserError."""
  try:
    with Image.open(path) as image:
      return image.copy()  # decodes now: a truncated file fails here, not later
  except FileNotFoundError:
    raise UserError(f'image file {path} not found') from None
  except UnidentifiedImageError:
    raise UserError(f'{path} is not an image file that Pillow can read') from None
  except OSError as e:
    raise UserError(f'cannot read image file {path}: {e}') from None


def to_model_input(image: Image.Image, form: InputForm) -> np.ndarray:
  """uint8 [size, size, channels] with the background at 0, as the run's training images were loaded.

  A transparent background is first filled with the dataset's own background colour (white for files
  that are dark on light), which a plain mode conversion would turn black.
  """
  if 'A' in image.getbands() or 'transparency' in image.info:
    image = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', image.size, 'white' if form.invert else 'black'), image)
  image = image.convert('L' if form.channels == 1 else 'RGB')
  smaller = form.size < max(image.size)
  image = image.resize((form.size, form.size), form.shrink if smaller else Image.Resampling.BILINEAR)
  pixels = np.asarray(image, np.uint8).reshape(form.size, form.size, form.channels)
  return 255 - pixels if form.invert else pixels


def conversion_note(image: Image.Image, form: InputForm) -> str | None:
  """What `to_model_input` does to a file whose size or channels differ from the model's input, in words."""
  width, height = image.size
  bands = image.getbands()
  colour = image.mode == 'P' or {'R', 'G', 'B'} <= set(bands)
  done = []
  if 'A' in bands or 'transparency' in image.info:
    done.append(f'transparent background filled with {"white" if form.invert else "black"}')
  if colour and form.channels == 1:
    done.append('converted to grayscale')
  elif not colour and form.channels == 3:
    done.append('grayscale copied to the 3 colour channels')
  if width != height:
    done.append(f'stretched to {form.size}x{form.size} (aspect ratio not kept)')
  elif width != form.size:
    done.append(f'resized to {form.size}x{form.size}')
  return f'{width}x{height} {image.mode}: ' + ', '.join(done) if done else None


def score_pairs(scorer: inference.Scorer, pairs: np.ndarray) -> np.ndarray:
  """Similarity (higher = more alike) of each pair of uint8 images [N, 2, H, W, C] -> float [N]."""
  embeddings = scorer.embed(pairs.reshape((-1,) + pairs.shape[2:]))
  return scorer.similarity(embeddings[0::2], embeddings[1::2])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    images = [read_image(path) for path in (FLAGS.image_a, FLAGS.image_b)]  # before the slower model load
    config, step, scorer = evaluate.load_trained(FLAGS.workdir, FLAGS.checkpoint)
    form = input_form(config.data)
    for path, image in zip((FLAGS.image_a, FLAGS.image_b), images):
      note = conversion_note(image, form)
      if note:
        print(f'note: {path} is {note}')
    pair = np.stack([to_model_input(image, form) for image in images])
    similarity = float(score_pairs(scorer, pair[None])[0])
    names = ' vs '.join(os.path.basename(path) for path in (FLAGS.image_a, FLAGS.image_b))
    title = f'{names}, model at step {step}'
    line = f'similarity {similarity:.6f}'
    if scorer.output_kind == 'logit':
      same = float(jax.nn.sigmoid(similarity))
      line += f'  P(same) {same:.4f}'
      title += f': P(same) {same:.3f}'
    print(line)
    try:
      path = plots.comparison(FLAGS.out, pair[0], pair[1], similarity, title=title)
    except OSError as e:
      raise UserError(f'cannot write {FLAGS.out}: {e}') from None
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, FLAGS))
