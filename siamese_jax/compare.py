"""Scores two image files with a trained model and draws them side by side.

    python -m siamese_jax.compare --workdir=DIR --image_a=a.png --image_b=b.png [--out=comparison.png]

The files (PNG, JPEG, anything Pillow reads) become model inputs the way the run's dataset loader makes
its own (`datasets.input_form`): squared to its image size, grayscale or RGB, and inverted for a dataset
stored dark on light (Omniglot), so that the background is 0 as in training. Prints the similarity
(higher = more alike; for a logit head also P(same), its sigmoid) and writes the two inputs as the model
sees them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags

from siamese_jax import cli, datasets, inference, plots
from siamese_jax.datasets import image_files
from siamese_jax.errors import UserError

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A training workdir (holding config.json and checkpoints/).', flag_values=FLAGS)
flags.DEFINE_string('image_a', None, 'First image file.', flag_values=FLAGS)
flags.DEFINE_string('image_b', None, 'Second image file.', flag_values=FLAGS)
flags.DEFINE_string('out', 'comparison.png', 'Where to write the picture of the pair (PNG).', flag_values=FLAGS)
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to use.', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'image_a', 'image_b'], flag_values=FLAGS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    images = [image_files.read_image(path) for path in (FLAGS.image_a, FLAGS.image_b)]  # before the model load
    config, step, scorer = inference.load_trained(FLAGS.workdir, FLAGS.checkpoint)
    form = datasets.input_form(config.data)
    for path, image in zip((FLAGS.image_a, FLAGS.image_b), images):
      note = image_files.conversion_note(image, form)
      if note:
        print(f'note: {path} is {note}')
    pair = np.stack([image_files.to_model_input(image, form) for image in images])
    similarity = float(inference.score_pairs(scorer, pair[None])[0])
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
