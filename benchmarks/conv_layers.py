"""One SAME 3x3 layer's forward pass and both gradients: XLA's convolution against Winograd's algorithm.

  python -m benchmarks.conv_layers --layers=256x512x4x200,64x256x8x200

Each layer is IN x OUT x SIDE x BATCH. Both sides run `jax.vjp` of the layer under `jax.jit` on the same
random input, kernel and output gradient, called in alternation; the table gives medians and the ratio.
XLA's side is the project's CPU convolution (`models.conv_general_dilated`: kernel gradients summed over
batch slices), which `models.Conv` uses where Winograd's algorithm does not pay.
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags

from siamese_jax import models

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run, not on import: other benchmarks define --repeats in absl's global flags too."""
  flags.DEFINE_list('layers', ['256x512x4x200', '64x256x8x200', '32x64x16x200'],
                    'Layers as IN x OUT x SIDE x BATCH (sides multiples of 4).')
  flags.DEFINE_integer('repeats', 15, 'Timed calls on each side (medians are reported).', lower_bound=1)


def xla_conv(x, kernel):
  return models.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def pass_and_gradients(conv):
  """The layer's output and its input and kernel gradients for a given output gradient, jitted."""

  def run(x, kernel, grad):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y,) + vjp(grad)

  return jax.jit(run)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  sides = {'xla': pass_and_gradients(xla_conv), 'winograd': pass_and_gradients(models.winograd_conv3x3)}
  print('| layer, maps, batch | XLA ms | Winograd ms | Winograd / XLA |')
  print('|---|---:|---:|---:|')
  for layer in FLAGS.layers:
    channels, features, side, batch = (int(v) for v in layer.split('x'))
    keys = jax.random.split(jax.random.key(0), 3)
    args = (jax.random.normal(keys[0], (batch, side, side, channels)),
            0.1 * jax.random.normal(keys[1], (3, 3, channels, features)),
            jax.random.normal(keys[2], (batch, side, side, features)))
    seconds = {name: [] for name in sides}
    for i in range(2 + FLAGS.repeats):
      for name, fn in sides.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= 2:
          seconds[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(s) for name, s in seconds.items()}
    print(f'| {channels}->{features}, {side}x{side}, {batch} | {ms["xla"]:.1f} | {ms["winograd"]:.1f} | '
          f'{ms["winograd"] / ms["xla"]:.2f} |')


if __name__ == '__main__':
  define_flags()
  app.run(main)
