"""Draws a batch of pairs the way training draws them and writes them as a labelled montage.

    python -m siamese_jax.show_pairs --config=configs/omniglot.py:smoke --out=pairs.png [--split=train]
        [--rows=7 --cols=7] [--seed=0] [--workdir=DIR] [--config.batch.same_group_prob=1.0]

Pairs come from training's own sampler (`samplers.sample_pairs` with the config's batch.positive_fraction
and batch.same_group_prob), so the picture is what the network learns from. With --workdir (a trained
run), each pair is also labelled with the model's similarity; without --config, the run's config is used.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from siamese_jax import cli, config_schema, datasets, inference, plots, samplers
from siamese_jax.datasets import ImageSet
from siamese_jax.errors import UserError

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file('config', None, 'Task config (path[:variant]); default: the --workdir run\'s.',
                                flag_values=FLAGS, lock_config=True)
flags.DEFINE_string('out', 'pairs.png', 'Where to write the montage (PNG).', flag_values=FLAGS)
flags.DEFINE_string('split', 'train', 'The split to draw pairs from.', flag_values=FLAGS)
flags.DEFINE_integer('rows', 7, 'Rows of pairs.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('cols', 7, 'Pairs per row.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the sampler.', flag_values=FLAGS)
flags.DEFINE_string('workdir', None, 'A training workdir: label each pair with its model\'s similarity.',
                    flag_values=FLAGS)
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of --workdir to use.',
                  flag_values=FLAGS)


def draw_pairs(image_set: ImageSet, batch_config, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` pairs as training samples them: uint8 images [count, 2, H, W, C] and labels [count] (1 = same)."""
  layout = samplers.class_layout(image_set.labels, image_set.groups)
  sample = functools.partial(samplers.sample_pairs, batch_size=count, positive_fraction=batch_config.positive_fraction,
                             same_group_prob=batch_config.same_group_prob)
  indices, labels = jax.jit(sample)(jax.random.key(seed), layout)  # one compilation, not one per operation
  return image_set.images[np.asarray(indices)], np.asarray(labels)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    config, scorer = FLAGS.config, None
    if FLAGS.workdir:
      trained, step, scorer = inference.load_trained(FLAGS.workdir, FLAGS.checkpoint)
      config = config or trained
    if config is None:
      raise UserError('give --config (a task config) or --workdir (a trained run)')
    config_schema.validate(config)
    splits = datasets.load_splits(config.data)
    if FLAGS.split not in splits:
      raise UserError(f'--split={FLAGS.split} is not a split of {config.data.name}; choose one of '
                      f'{", ".join(splits)}')
    image_set = splits[FLAGS.split]
    pairs, labels = draw_pairs(image_set, config.batch, FLAGS.rows * FLAGS.cols, FLAGS.seed)
    title, scores = f'{config.data.name} {FLAGS.split}', None
    if scorer is not None:
      form = datasets.input_form(trained.data)
      if image_set.image_shape != (form.size, form.size, form.channels):
        raise UserError(f'{FLAGS.split} images are {image_set.image_shape} but the model in {FLAGS.workdir} '
                        f'takes {(form.size, form.size, form.channels)}; set --config.data.image_size')
      scores = inference.score_pairs(scorer, pairs)
      title += f', similarity of the model at step {step}'
    try:
      path = plots.pair_montage(FLAGS.out, pairs[:, 0], pairs[:, 1], labels, scores, FLAGS.rows, FLAGS.cols,
                                title=title)
    except OSError as e:
      raise UserError(f'cannot write {FLAGS.out}: {e}') from None
  print(f'wrote {path}: {int(labels.sum())} positive and {int(len(labels) - labels.sum())} negative pairs '
        f'from {image_set.source} ({FLAGS.split})')


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, FLAGS))
