"""An embedding database on the command line: embed a collection once, query it later.

    python -m siamese_jax.index build --workdir=DIR (--split=NAME | --images=FOLDER_OR_ZIP) --out=INDEX [--kind=flat]
    python -m siamese_jax.index add --index=INDEX (--split=NAME | --images=FOLDER_OR_ZIP)
    python -m siamese_jax.index query --index=INDEX --image=a.png [--k=10] [--out=neighbours.png]

`build` embeds every image with the workdir's best checkpoint (or `--checkpoint`) and writes the index
folder (see `embedding_index`); image files are read as the run's dataset reads its own
(`datasets.input_form`), and labelled by the name of the folder they are in. `add` embeds more images with
the model that built the index; `query` prints the k best items with the network's similarity (higher =
more alike). `--workdir` with `add` or `query` names where the building workdir is now, if it moved; a
different model is refused.
"""

from __future__ import annotations

import os

from absl import app, flags

from siamese_jax import cli, embedding_index, plots
from siamese_jax.datasets import image_files
from siamese_jax.errors import UserError

COMMANDS = ('build', 'add', 'query')
FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'build: the training workdir; add, query: where it is now, if it moved.',
                    flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', 'build: best, latest or a step.', flag_values=FLAGS)
flags.DEFINE_string('split', None, 'build, add: a split of the run\'s dataset to index.', flag_values=FLAGS)
flags.DEFINE_string('images', None, 'build, add: a folder or zip of image files to index.', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'build: the index folder to write; query: a PNG of the neighbours.',
                    flag_values=FLAGS)
flags.DEFINE_string('index', None, 'add, query: the index folder.', flag_values=FLAGS)
flags.DEFINE_enum('kind', 'flat', embedding_index.KINDS, 'build: exact (flat) or approximate search.',
                  flag_values=FLAGS)
flags.DEFINE_string('image', None, 'query: the image file to look up.', flag_values=FLAGS)
flags.DEFINE_integer('k', 10, 'query: how many neighbours.', flag_values=FLAGS)


def _collection(embedder):
  if (FLAGS.split is None) == (FLAGS.images is None):
    raise UserError('give one of --split and --images')
  if FLAGS.split is not None:
    return embedding_index.split_collection(embedder, FLAGS.split)
  return embedding_index.file_collection(embedder, FLAGS.images)


def _loaded():
  """The index at --index, with the model that built it (or the same one at --workdir)."""
  if not FLAGS.index:
    raise UserError('give --index')
  index = embedding_index.Index.load(FLAGS.index)
  if FLAGS.workdir:
    index.use_model(embedding_index.Embedder.load(FLAGS.workdir, index.model.step if index.model else 'best'))
  return index


def build():
  if not FLAGS.workdir or not FLAGS.out:
    raise UserError('build needs --workdir and --out')
  if os.path.exists(os.path.join(FLAGS.out, 'CURRENT')):
    raise UserError(f'{FLAGS.out} already holds an index; add to it with `add --index={FLAGS.out}`')
  embedder = embedding_index.Embedder.load(FLAGS.workdir, cli.checkpoint_choice(FLAGS.checkpoint))
  collection = _collection(embedder)
  index = embedding_index.build(embedder, collection, FLAGS.kind)
  index.save(FLAGS.out)
  print(f'wrote {FLAGS.out}: {len(index)} items, {index.dim}-d, {index.metric} ({index.kind}), model at step '
        f'{embedder.card.step}')


def add():
  index = _loaded()
  embedder = index.get_embedder()
  collection = _collection(embedder)
  index.add(embedder.embed(collection.images, progress=True), collection.labels, collection.sources)
  index.save(FLAGS.index)
  print(f'wrote {FLAGS.index}: {len(index)} items')


def query():
  if not FLAGS.image:
    raise UserError('query needs --image')
  image = image_files.read_image(FLAGS.image)  # before the slower model load
  index = _loaded()
  pixels = image_files.to_model_input(image, index.get_embedder().form)
  found = index.search(pixels[None], min(FLAGS.k, len(index)))
  print(f'{FLAGS.image}: the {len(found.ids[0])} nearest of {len(index)} items in {FLAGS.index}')
  print('rank  id  score  label  source')
  for rank, (item, score, label, source) in enumerate(
      zip(found.ids[0], found.scores[0], found.labels[0], found.sources[0]), 1):
    print(f'{rank}  {item}  {score:.6f}  {label or "-"}  {source or "-"}')
  if FLAGS.out:
    neighbours = embedding_index.read_sources(found.sources[0], index.embedder)
    try:
      path = plots.neighbours(FLAGS.out, pixels, neighbours, found.scores[0], labels=found.labels[0],
                              title=f'{os.path.basename(FLAGS.image)}: nearest in {FLAGS.index}')
    except OSError as e:
      raise UserError(f'cannot write {FLAGS.out}: {e}') from None
    print(f'wrote {path}')


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {", ".join(COMMANDS)}')
  with cli.user_errors():
    {'build': build, 'add': add, 'query': query}[argv[1]]()


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, FLAGS))
