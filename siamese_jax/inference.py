"""A trained network as two functions: embed images, compare embeddings; and loading one from its workdir.

Evaluators, the command-line tools (evaluate, show_pairs, compare, index) and the embedding database all go
through `Scorer`, so images are preprocessed one way everywhere and each image is embedded once.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from siamese_jax import augment, checkpoints, config_schema, datasets, distances, evaluators, models, sharding
from siamese_jax.errors import UserError


def to_float(images):
  """uint8 images -> float32 in [0, 1]: the network's input everywhere."""
  return images.astype(jnp.float32) / 255.0


class Scorer:
  """Embeds image arrays in sharded batches and scores embedding pairs (higher = more alike).

  With `average_symmetries`, an image's embedding is the mean of its eight quarter turns and mirror
  images' embeddings: for pictures with no up or down, such as cells, whose network was trained on all
  eight (`augment.dihedral`). With `average_shifts` = p > 0, the mean over the image and its shifts by p
  pixels in the four directions (of each symmetry, with both): a drawing and its slightly displaced copies,
  so that a stroke one pixel off no longer moves the embedding much. The mean goes back on the unit sphere
  when the model normalises.
  """

  def __init__(self, model: models.SiameseNet, params, mesh, batch_size: int = 256,
               average_symmetries: bool = False, average_shifts: int = 0):
    self.mesh = mesh
    self.batch_size = -(-batch_size // mesh.size) * mesh.size
    self.output_kind = model.head.output_kind
    self.set_params(params)

    @functools.partial(jax.jit, out_shardings=sharding.batch_sharded(mesh))
    def embed(params, images):
      x = to_float(images)
      views = [x]
      if average_symmetries:
        if x.shape[1] != x.shape[2]:  # Checked while tracing: quarter turns need square images.
          raise UserError(f'train.eval_average_symmetries needs square images, got {x.shape[1]}x{x.shape[2]}')
        views = augment.dihedral_views(x)
      if average_shifts:
        views = [shifted for view in views for shifted in augment.shift_views(view, average_shifts)]
      embeddings = model.apply({'params': params}, jnp.concatenate(views), method=models.SiameseNet.embed)
      if len(views) == 1:
        return embeddings
      mean = embeddings.reshape((len(views),) + x.shape[:1] + embeddings.shape[1:]).mean(axis=0)
      return distances.unit_length(mean) if model.normalize else mean

    @jax.jit
    def similarity(params, e1, e2):
      out = model.apply({'params': params}, e1, e2, method=models.SiameseNet.compare)
      return models.similarity(out, self.output_kind)

    self._embed = embed
    self._similarity = similarity

  @classmethod
  def for_config(cls, config, model: models.SiameseNet, params, mesh) -> Scorer:
    """The scorer a training config asks for (`train.eval_batch_size`, `train.eval_average_symmetries`,
    `train.eval_average_shifts`)."""
    return cls(model, params, mesh, config.train.eval_batch_size, config.train.eval_average_symmetries,
               config.train.eval_average_shifts)

  def set_params(self, params) -> None:
    """Scores with new parameters, reusing the compiled functions (one compilation per run)."""
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  def embed(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, D], padded into fixed-size sharded batches."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded = np.zeros((self.batch_size,) + chunk.shape[1:], chunk.dtype)
      padded[:len(chunk)] = chunk
      batch = jax.make_array_from_callback(padded.shape, sharding.batch_sharded(self.mesh),
                                           lambda index, padded=padded: padded[index])
      out.append(np.asarray(multihost_utils.process_allgather(self._embed(self.params, batch), tiled=True))
                 [:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def similarity(self, e1, e2) -> np.ndarray:
    """Scores of embedding pairs; e1 and e2 broadcast against each other on their leading axes."""
    e1, e2 = jnp.broadcast_arrays(jnp.asarray(e1), jnp.asarray(e2))
    return np.asarray(self._similarity(self.params, e1, e2))


def load_trained(workdir: str, which: str | int = 'best'):
  """(config, step, Scorer) for a workdir's 'best' or 'latest' checkpoint, or the one at step `which`.

  'best' is the checkpoint that training kept as best (`checkpoints.Manager.best_step`).
  """
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'{workdir} is not a training workdir (no config.json)')
  with open(config_path) as f:
    config = config_schema.from_saved(json.load(f))
  manager = checkpoints.Manager(workdir, config.train.best_metric)
  steps = manager.steps()
  if not steps:
    raise UserError(f'no checkpoint in {workdir}/checkpoints')
  if which == 'best':
    step = manager.best_step()
  elif which == 'latest':
    step = max(steps)
  elif which in steps:
    step = which
  else:
    raise UserError(f'no checkpoint at step {which} in {workdir}/checkpoints (there are {sorted(steps)})')
  try:
    params = manager.restore_params(step)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'cannot read the checkpoint at step {step} in {workdir}/checkpoints ({type(e).__name__}: '
                    f'{str(e).strip().splitlines()[0] if str(e).strip() else ""})') from None
  if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)):
    raise UserError(f'the checkpoint at step {step} in {workdir}/checkpoints holds non-finite parameters '
                    '(the run diverged); it cannot score anything')
  model = models.build(config.model)
  return config, step, Scorer.for_config(config, model, params, sharding.data_mesh())


def score_pairs(scorer: Scorer, pairs: np.ndarray) -> np.ndarray:
  """Similarity (higher = more alike) of each pair of uint8 images [N, 2, H, W, C] -> float [N]."""
  embeddings = scorer.embed(pairs.reshape((-1,) + pairs.shape[2:]))
  return scorer.similarity(embeddings[0::2], embeddings[1::2])


class _SplitsOnDemand(Mapping):
  """A run's splits, loaded when an evaluator first asks for one: Lake runs read from disk need none."""

  def __init__(self, data_config):
    self._data_config = data_config
    self._splits = None

  def _loaded(self) -> dict:
    if self._splits is None:
      self._splits = datasets.load_splits(self._data_config)
    return self._splits

  def __getitem__(self, name):
    return self._loaded()[name]

  def __iter__(self):
    return iter(self._loaded())

  def __len__(self) -> int:
    return len(self._loaded())


def evaluate(config, scorer: Scorer, blocks) -> dict[str, float]:
  """The metrics of evaluator `blocks` (name -> block, as in `config.evaluators`) on a run trained with
  `config`, each prefixed with its block's name.

  Lake runs read from disk (`path`) are read as the model's inputs, so they need no dataset.
  """
  blocks = read_as_trained(blocks, config.data)
  return evaluators.run_all(evaluators.build_all(blocks, _SplitsOnDemand(config.data)), scorer)


def read_as_trained(blocks, data_config) -> dict[str, dict]:
  """Evaluator `blocks` (name -> block) with each block of Lake runs read from disk (`path`) told the input
  size and crop of a model trained on `data_config`, where the block does not set them itself."""
  blocks = {name: dict(block) for name, block in blocks.items()}
  for block in blocks.values():
    if block.get('kind') == 'lake_runs' and block.get('path'):
      form = datasets.input_form(data_config)
      block['image_size'] = block.get('image_size') or form.size
      block.setdefault('crop_to_ink', form.crop_to_ink)
  return blocks


def pick_with_random_ties(rng: np.random.Generator, scores: np.ndarray) -> np.ndarray:
  """argmax over the last axis, choosing uniformly among tied maxima.

  A plain argmax picks the first of equal scores, so a model that outputs a constant would look perfect
  whenever the right answer comes first; with random ties it scores chance, as it should.
  """
  is_max = scores == scores.max(axis=-1, keepdims=True)
  return np.argmax(is_max * (1.0 + rng.random(scores.shape)), axis=-1)
