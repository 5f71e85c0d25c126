"""One convolution layer's forward pass and gradients under each of the project's CPU formulations.

  python -m benchmarks.conv_layers --layers=256x512x4x200,64x256x8x200
  python -m benchmarks.conv_layers --layers=64x128x48x64x7,128x128x21x64x4,1x64x105x64x10

A layer is IN x OUT x SIDE x BATCH for a SAME 3x3 layer (XLA's convolution against Winograd's algorithm),
or IN x OUT x SIDE x BATCH x K for a VALID K x K layer (XLA's convolution against the FFT). Every side
runs `jax.vjp` of the layer under `jax.jit` on the same random input, kernel and output gradient, called
in alternation; the table gives medians and each side's time over XLA's. A layer with one input channel
is a network's first and is timed without the input gradient, which it never needs. XLA's side is the
project's CPU convolution (`models.conv_general_dilated`: kernel gradients summed over batch slices),
which `models.Conv` uses where no other formulation pays.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
from absl import app, flags

from siamese_jax import models

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run, not on import: other benchmarks define --repeats in absl's global flags too."""
  flags.DEFINE_list('layers', ['256x512x4x200', '64x256x8x200', '32x64x16x200'],
                    'Layers as IN x OUT x SIDE x BATCH (SAME 3x3, sides multiples of 4) or IN x OUT x SIDE x '
                    'BATCH x K (VALID K x K).')
  flags.DEFINE_integer('repeats', 15, 'Timed calls on each side (medians are reported).', lower_bound=1)


def xla_conv(x, kernel, padding):
  return models.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


SAME_3X3 = {'xla': functools.partial(xla_conv, padding='SAME'), 'winograd': models.winograd_conv3x3}
VALID = {'xla': functools.partial(xla_conv, padding='VALID'), 'fft': models.fft_conv_valid}


def pass_and_gradients(conv, input_gradient: bool):
  """The layer's output and its kernel gradient (and input gradient) for a given output gradient, jitted."""

  def run(x, kernel, grad):
    if input_gradient:
      y, vjp = jax.vjp(conv, x, kernel)
    else:
      y, vjp = jax.vjp(lambda kernel: conv(x, kernel), kernel)
    return (y,) + vjp(grad)

  return jax.jit(run)


def layer_sides(layer: str):
  """The layer's description, its random arguments (input, kernel, output gradient) and its jitted sides."""
  sizes = [int(v) for v in layer.split('x')]
  channels, features, side, batch = sizes[:4]
  valid = len(sizes) == 5
  k = sizes[4] if valid else 3
  out_side = side - k + 1 if valid else side
  keys = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(keys[0], (batch, side, side, channels)),
          0.1 * jax.random.normal(keys[1], (k, k, channels, features)),
          jax.random.normal(keys[2], (batch, out_side, out_side, features)))
  sides = {name: pass_and_gradients(conv, input_gradient=channels > 1)
           for name, conv in (VALID if valid else SAME_3X3).items()}
  kind = f'VALID {k}x{k}' if valid else 'SAME 3x3'
  return f'{kind} {channels}->{features}, {side}x{side}, {batch}', args, sides


def median_ms(sides: dict, args, repeats: int) -> dict[str, float]:
  """Each side's median milliseconds over `repeats` calls, the sides called in turn after two untimed rounds."""
  seconds = {name: [] for name in sides}
  for i in range(2 + repeats):
    for name, fn in sides.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      if i >= 2:
        seconds[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(s) for name, s in seconds.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  print('| layer, maps, batch | side: ms (time / XLA\'s) |')
  print('|---|---|')
  for layer in FLAGS.layers:
    name, args, sides = layer_sides(layer)
    ms = median_ms(sides, args, FLAGS.repeats)
    print(f'| {name} | ' + ', '.join(f'{side}: {t:.1f} ({t / ms["xla"]:.2f})' for side, t in ms.items()) + ' |',
          flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
