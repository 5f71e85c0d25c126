"""One training step of a config's network, side by side with the same network in PyTorch eager.

  pip install -e '.[benchmark]'   # PyTorch, for the reference row only
  python -m benchmarks.cpu_step --config=configs/omniglot.py:cpu --repeats=20
  python -m benchmarks.cpu_step --config=configs/omniglot.py:koch2015 --repeats=5

Both sides run the whole optimizer step on one fixed random batch already in memory: the tower over every
image, the config's head and loss (episodic softmax over each episode's classes, or binary cross-entropy
of pair logits), the gradient and an Adam update. No sampling or distortions, which neither side needs to
share. The two are timed in alternation, call after call, so that both see the same machine; the ratio
of their medians is what a user choosing between them would see. `--max_pool=reduce_window` runs the
JAX side with Flax's `nn.max_pool` instead of the project's reshape-and-max pool, and
`--kernel_grad=whole_batch` with XLA's kernel gradients over the whole batch instead of summed over
slices of it, `--group_norm=flax` with Flax's `nn.GroupNorm` instead of the project's, and
`--conv3x3=xla` with XLA's convolution for the wide 3x3 layers that otherwise run by Winograd's
algorithm, `--large_kernels=xla` with XLA's convolution for the VALID layers that otherwise run by the
FFT (each the earlier code).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from siamese_jax import config_schema, models, sharding, train

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run, not on import: other benchmarks define --config in absl's global flags too."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file (path[:variant]).',
                                  lock_config=True)
  flags.DEFINE_integer('repeats', 20, 'Timed steps on each side (medians are reported).', lower_bound=1)
  flags.DEFINE_integer('warmup', 3, 'Untimed steps on each side first.', lower_bound=0)
  flags.DEFINE_enum('max_pool', 'reshape', ['reshape', 'reduce_window'], 'The JAX side\'s 2x2 max-pool.')
  flags.DEFINE_enum('kernel_grad', 'sliced', ['sliced', 'whole_batch'],
                    "The JAX side's convolution kernel gradients: summed over batch slices, or XLA's own.")
  flags.DEFINE_enum('group_norm', 'sums', ['sums', 'flax'],
                    "The JAX side's GroupNorm: from per-channel sums (models.GroupNorm), or Flax's.")
  flags.DEFINE_enum('conv3x3', 'winograd', ['winograd', 'xla'],
                    "The JAX side's wide 3x3 layers: Winograd's algorithm, or XLA's convolution.")
  flags.DEFINE_enum('large_kernels', 'fft', ['fft', 'xla'],
                    "The JAX side's VALID layers with 4x4 or larger kernels: by the FFT, or XLA's convolution.")
  flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')


def batch_shape(config) -> tuple[int, ...]:
  size = config.data.image_size
  leading = (config.batch.size, 2) if config.batch.kind == 'pairs' else (config.batch.size,)
  return leading + (size, size, 1)


def jax_step(config, images: np.ndarray, labels: np.ndarray):
  """The project's own jitted training step (host input path) and a state to call it on."""
  config = config.copy_and_resolve_references()
  config.device_resident = False
  config.train.steps_per_call = 1
  config.augment.strength = 0.0
  config_schema.validate(config)
  mesh = sharding.data_mesh(jax.devices()[:1])
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  state = train.init_state(config, model, tx, images.shape[-3:], jax.random.key(0))
  step = train.compile_training_call(config, model, tx, mesh, sharding.replicated(mesh))
  images, labels, key = jnp.asarray(images), jnp.asarray(labels), jax.random.key(1)

  def call(state):
    state, metrics = step(state, images, labels, key)
    return jax.block_until_ready((state, metrics))[0]

  return call, state


def torch_step(config, images: np.ndarray, labels: np.ndarray):
  """The same tower, head, loss and Adam step in PyTorch eager (channels first, its native layout)."""
  import torch  # pylint: disable=g-import-not-at-top

  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  network = torch_reference.build(config)
  optimizer = torch.optim.Adam(network.parameters(), lr=config.optimizer.learning_rate)
  x = torch.from_numpy(images).float().div(255.0)
  x = x.reshape((-1,) + x.shape[-3:]).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels)

  def call(state):
    optimizer.zero_grad(set_to_none=True)
    loss = torch_reference.loss(network, config, x, y)
    loss.backward()
    optimizer.step()
    return state

  return call, None


def alternate(sides: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
  """Seconds of each side's steps, the sides called in turn so that they share the machine's state."""
  states = {name: state for name, (_, state) in sides.items()}
  seconds = {name: [] for name in sides}
  for i in range(warmup + repeats):
    for name, (call, _) in sides.items():
      start = time.perf_counter()
      states[name] = call(states[name])
      if i >= warmup:
        seconds[name].append(time.perf_counter() - start)
  return seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  if config is None:
    sys.exit('error: give --config=configs/<task>.py[:variant]')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, batch_shape(config), dtype=np.uint8)
  if config.batch.kind == 'pairs':
    labels = (np.arange(config.batch.size) % 2).astype(np.int32)
  else:
    labels = np.repeat(np.arange(config.batch.size // config.batch.images_per_class), config.batch.images_per_class)
  if FLAGS.max_pool == 'reduce_window':
    models.max_pool_2x2 = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
  if FLAGS.kernel_grad == 'whole_batch':
    models.KERNEL_GRAD_SLICE_ELEMENTS = sys.maxsize  # one slice: the whole batch
  if FLAGS.group_norm == 'flax':
    models.GroupNorm = nn.GroupNorm
  if FLAGS.conv3x3 == 'xla':
    models.WINOGRAD_MIN_CHANNELS = sys.maxsize  # no layer is wide enough
  if FLAGS.large_kernels == 'xla':
    models.FFT_MIN_CHANNELS = sys.maxsize
  sides = {'jax': jax_step(config, images, labels)}
  try:
    sides['pytorch'] = torch_step(config, images, labels)
  except ImportError:
    print('PyTorch is not installed (pip install -e \'.[benchmark]\'): the JAX side only', file=sys.stderr)
  seconds = alternate(sides, FLAGS.warmup, FLAGS.repeats)
  medians = {name: statistics.median(s) for name, s in seconds.items()}
  unit = 'pairs' if config.batch.kind == 'pairs' else 'images'
  print(f'batch {config.batch.size} {unit}, {config.data.image_size}px, {config.model.encoder}, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}; median of {FLAGS.repeats} alternated steps, '
        f'max_pool={FLAGS.max_pool}, kernel_grad={FLAGS.kernel_grad}, group_norm={FLAGS.group_norm}, '
        f'conv3x3={FLAGS.conv3x3}, large_kernels={FLAGS.large_kernels}')
  print('| side | step ms (min-max) | ' + unit + '/s |')
  print('|---|---:|---:|')
  for name, values in seconds.items():
    print(f'| {name} | {1e3 * medians[name]:.1f} ({1e3 * min(values):.1f}-{1e3 * max(values):.1f}) | '
          f'{config.batch.size / medians[name]:.0f} |')
  if 'pytorch' in medians:
    print(f'JAX step / PyTorch step: {medians["jax"] / medians["pytorch"]:.2f}')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump({'config': config.to_dict(), 'max_pool': FLAGS.max_pool, 'kernel_grad': FLAGS.kernel_grad,
                 'group_norm': FLAGS.group_norm, 'conv3x3': FLAGS.conv3x3, 'large_kernels': FLAGS.large_kernels,
                 'seconds': seconds},
                f, indent=1, default=str)


if __name__ == '__main__':
  define_flags()
  app.run(main)
