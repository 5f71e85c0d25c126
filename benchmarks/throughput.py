"""Training throughput: step time, pairs/s and TFLOP/s of the jitted training step.

  python -m benchmarks.throughput --config=configs/omniglot.py:koch2015 --batch_sizes=32,128 \
      --dtypes=float32,bfloat16 --steps=20 --json=throughput.json

For every (batch size, dtype) two rows are measured:
  synthetic:  the host-path step (`train.compile_training_call` with device_resident=False: one `train.train_step` under
              jit with the mesh shardings and state donation) on random uint8 batches already on the device,
              i.e. the cost of the step alone;
  end_to_end: the device-resident fused call (`train.compile_training_call` with device_resident=True): batches and
              affine distortions drawn on the device from the training split, `steps_per_call` steps per
              call, i.e. what a training run does minus validation and checkpoints.
The step is compiled ahead of time (`lower().compile()`, timed as compile time), called `--warmup` times,
then `--steps` times, each call timed to `block_until_ready`; the median is reported.

With `--oneshot_runs=20` it also times one-shot evaluation per dtype: that many Lake-style 20-way runs
(20 x 20 = 400 trials) scored by `lake_runs.score_runs`, every image embedded in one pass. Runs are drawn
with `lake_runs.make_runs` from the config's validation alphabets and drawers (Omniglot), else from
random images; the network is freshly initialised, since the time does not depend on the weights.

TFLOP/s divide the analytic count of the conv tower (2 FLOPs per multiply-add of the convolutions and the
embedding layer, training = 3x forward, 2 images per pair) by the median step time. XLA's cost analysis of
the compiled single step (times the number of devices: it analyses one device's program) is reported
beside it, and used for encoders without an analytic count. It is not the default because on GPUs it
leaves out the convolutions that run as cuDNN calls: on an H100 it counted 11.5 of Koch's 348.9 GFLOP per
step at batch 32. The fused call's own analysis is not used either: XLA counts a loop body once whatever
its trip count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh
from ml_collections import config_flags

from siamese_jax import config_schema, datasets, inference, lake_runs, models, samplers, sharding, train
from siamese_jax.datasets import omniglot
from siamese_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file (path[:variant]).', lock_config=True)
flags.DEFINE_list('batch_sizes', None, 'Global batch sizes to measure; default: the config\'s batch.size.')
flags.DEFINE_list('dtypes', None, 'Compute dtypes (model.dtype) to measure; default: the config\'s.')
flags.DEFINE_integer('steps', 20, 'Timed calls per measurement (the median is reported).', lower_bound=1)
flags.DEFINE_integer('warmup', 2, 'Untimed calls after compilation.', lower_bound=0)
flags.DEFINE_integer('steps_per_call', None, 'Steps fused into one end-to-end call; default: the config\'s '
                     'train.steps_per_call.', lower_bound=1)
flags.DEFINE_enum('data', 'auto', ['auto', 'config', 'synthetic'],
                  'Training images for end-to-end: the config\'s dataset (config), random images of the '
                  'config\'s data.image_size (synthetic), or the dataset if it loads, else random (auto).')
flags.DEFINE_integer('image_channels', 1, 'Channels of the random images of --data=synthetic.', lower_bound=1)
flags.DEFINE_float('peak_tflops', 798.0, 'Peak rate for the fraction-of-peak column (default: the measured '
                   'H100 dense bf16 matmul rate).')
flags.DEFINE_integer('oneshot_runs', 0, 'Also time scoring this many 20-way one-shot runs per dtype (0: no).',
                     lower_bound=0)
flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')

# Random stand-in for a training split, the size of Omniglot's background set.
_SYNTHETIC_CLASSES, _SYNTHETIC_PER_CLASS, _SYNTHETIC_GROUPS = 964, 12, 30


def conv_tower_forward_flops(image_shape, features, kernel_sizes, embedding_dim) -> float:
  """FLOPs of one image through `models.ConvTower` (2 per multiply-add; biases, ReLU, pooling ignored).

  Koch et al.'s tower on a 105x105x1 image: 1.817 GFLOP.
  """
  size, _, channels = image_shape
  flops = 0.0
  for i, (width, kernel) in enumerate(zip(features, kernel_sizes)):
    size -= kernel - 1  # VALID convolution
    flops += 2.0 * size * size * width * kernel * kernel * channels
    channels = width
    if i < len(features) - 1:
      size //= 2  # 2x2 max pool, stride 2
  return flops + 2.0 * size * size * channels * embedding_dim


def analytic_step_flops(config: ml_collections.ConfigDict, image_shape) -> float | None:
  """Training FLOPs of one step, 3x the forward pass of every image; None for encoders without a count."""
  if config.model.encoder != 'conv_tower':
    return None
  forward = conv_tower_forward_flops(image_shape, config.model.features, config.model.kernel_sizes,
                                     config.model.embedding_dim)
  images = 2 * config.batch.size if config.batch.kind == 'pairs' else config.batch.size
  return 3.0 * forward * images


def xla_flops(compiled, num_devices: int) -> float | None:
  """FLOPs of all devices from XLA's cost analysis (a dict, or a list of one dict in older jax)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or analysis.get('flops', -1) <= 0:
    return None
  return float(analysis['flops']) * num_devices


def random_image_set(image_shape, seed: int = 0) -> datasets.ImageSet:
  """Random uint8 images in an Omniglot-sized class and group layout (step time does not see pixels)."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(_SYNTHETIC_CLASSES, dtype=np.int32), _SYNTHETIC_PER_CLASS)
  images = rng.integers(0, 256, (len(labels),) + tuple(image_shape), dtype=np.uint8)
  return datasets.ImageSet(images=images, labels=labels, groups=labels % _SYNTHETIC_GROUPS,
                           class_names=tuple(map(str, range(_SYNTHETIC_CLASSES))),
                           group_names=tuple(map(str, range(_SYNTHETIC_GROUPS))),
                           source=f'random images, {image_shape[0]}px')


def _dataset_unless_synthetic(data: str, load):
  """`load()` per `--data`: None (use random images) for synthetic, or for auto when it fails."""
  if data == 'synthetic':
    return None
  try:
    return load()
  except UserError as error:
    if data == 'config':
      raise
    logging.warning('using random images: the dataset did not load (%s)', error)
    return None


def training_images(config: ml_collections.ConfigDict, data: str, channels: int) -> datasets.ImageSet:
  """The training split per `--data` (see the flag)."""
  image_set = _dataset_unless_synthetic(data, lambda: datasets.load_splits(config.data)['train'])
  if image_set is not None:
    return image_set
  size = config.data.get('image_size')
  if not isinstance(size, int) or size < 1:
    raise UserError(f'random images need a positive integer data.image_size, got {size!r}; '
                    'set --config.data.image_size')
  return random_image_set((size, size, channels))


def variant(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides, e.g. variant(c, **{'batch.size': 8})."""
  config = config.copy_and_resolve_references()
  for dotted, value in overrides.items():
    *parents, name = dotted.split('.')
    block = functools.reduce(getattr, parents, config)
    setattr(block, name, value)
  config_schema.validate(config)
  return config


def time_calls(call, state, warmup: int, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `call(state) -> (state, metrics)`, after `warmup` calls."""
  seconds = []
  for i in range(warmup + repeats):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(call(state))
    elapsed = time.perf_counter() - start
    logging.info('call %d/%d (%s): %.3f s', i + 1, warmup + repeats, 'timed' if i >= warmup else 'warm-up',
                 elapsed)
    if i >= warmup:
      seconds.append(elapsed)
  return seconds


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement; `tflops` uses the analytic FLOP count, else XLA's (`flops_source` says which)."""

  mode: str
  batch_size: int
  dtype: str
  steps_per_call: int
  compile_s: float
  step_ms: float  # median over calls, per step
  step_ms_samples: tuple[float, ...]
  pairs_per_s: float  # examples (pairs, or images of M-per-class batches) per second
  xla_flops_per_step: float | None
  analytic_flops_per_step: float | None
  flops_source: str | None
  tflops: float | None
  peak_fraction: float | None
  data: str

  @classmethod
  def from_times(cls, *, mode, config, call_seconds, compile_s, xla, analytic, peak_tflops, data):
    steps_per_call = config.train.steps_per_call
    step_s = [s / steps_per_call for s in call_seconds]
    median = statistics.median(step_s)
    if analytic is not None:
      flops, source = analytic, 'analytic'
    elif xla is not None:
      flops, source = xla, 'xla'
    else:
      flops, source = None, None
    tflops = flops / median / 1e12 if flops is not None else None
    return cls(mode=mode, batch_size=config.batch.size, dtype=config.model.dtype,
               steps_per_call=steps_per_call, compile_s=compile_s, step_ms=1e3 * median,
               step_ms_samples=tuple(1e3 * s for s in step_s), pairs_per_s=config.batch.size / median,
               xla_flops_per_step=xla, analytic_flops_per_step=analytic, flops_source=source, tflops=tflops,
               peak_fraction=tflops / peak_tflops if tflops is not None else None, data=data)


def _compile_ahead(mode: str, jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  logging.info('%s: compiled in %.1f s', mode, seconds)
  return compiled, seconds


def benchmark(config: ml_collections.ConfigDict, image_set: datasets.ImageSet, device_data, mesh: Mesh, *,
              warmup: int, steps: int, peak_tflops: float) -> list[Row]:
  """The synthetic and end-to-end rows for one device-resident config (batch size, dtype, steps per call)."""
  sharding.check_batch_size(config.batch.size, mesh)
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  state_sharding = sharding.replicated(mesh)
  init = jax.jit(functools.partial(train.init_state, config, model, tx, image_set.image_shape),
                 out_shardings=state_sharding)
  key = jax.random.key(config.seed)
  analytic = analytic_step_flops(config, image_set.image_shape)
  measure = functools.partial(Row.from_times, analytic=analytic, peak_tflops=peak_tflops)

  host_config = variant(config, device_resident=False, **{'train.steps_per_call': 1})
  batch = config.batch.size
  if config.batch.kind == 'pairs':
    batch_shape, labels = (batch, 2), jnp.arange(batch) % 2
  else:
    batch_shape, labels = (batch,), jnp.arange(batch) // config.batch.images_per_class
  images = jax.jit(lambda k: jax.random.bits(k, batch_shape + image_set.image_shape, jnp.uint8),
                   out_shardings=sharding.batch_sharded(mesh))(key)
  labels = jax.device_put(labels.astype(jnp.int32), sharding.batch_sharded(mesh))
  state = init(key)
  host_jit = train.compile_training_call(host_config, model, tx, mesh, state_sharding)
  step, compile_s = _compile_ahead('synthetic', host_jit, state, images, labels, key)
  xla = xla_flops(step, mesh.size)
  seconds = time_calls(lambda s: step(s, images, labels, key), state, warmup, steps)
  rows = [measure(mode='synthetic', config=host_config, call_seconds=seconds, compile_s=compile_s, xla=xla,
                  data='random batch')]

  state = init(key)
  fused_jit = train.compile_training_call(config, model, tx, mesh, state_sharding)
  fused, compile_s = _compile_ahead('end_to_end', fused_jit, state, device_data, key)
  seconds = time_calls(lambda s: fused(s, device_data, key), state, warmup, steps)
  rows.append(measure(mode='end_to_end', config=config, call_seconds=seconds, compile_s=compile_s,
                      xla=xla, data=image_set.source))
  return rows


def oneshot_runs(config: ml_collections.ConfigDict, data: str, num_runs: int,
                 ways: int = 20) -> list[lake_runs.LakeRun]:
  """Lake-style runs from the config's Omniglot validation drawings, or from random images (per `--data`)."""
  if config.data.name == 'omniglot':
    runs = _dataset_unless_synthetic(data, lambda: lake_runs.make_runs(
        omniglot.load_drawings(config.data).where(config.data.validation_alphabets, config.data.validation_drawers),
        num_runs=num_runs, ways=ways))
    if runs is not None:
      return runs
  size = config.data.image_size
  rng = np.random.default_rng(0)
  return [lake_runs.LakeRun(name=f'run{r + 1:02d}',
                            support=rng.integers(0, 256, (ways, size, size, 1), dtype=np.uint8),
                            queries=rng.integers(0, 256, (ways, size, size, 1), dtype=np.uint8),
                            answers=rng.permutation(ways).astype(np.int32)) for r in range(num_runs)]


def time_oneshot(config: ml_collections.ConfigDict, runs, repeats: int) -> dict:
  """Seconds to score `runs` with a fresh network: the first call (compiling) and the median of `repeats`."""
  model = models.build(config.model)
  image_shape = runs[0].support.shape[1:]
  params = jax.jit(functools.partial(models.init_params, model, image_shape))(jax.random.key(config.seed))
  scorer = inference.Scorer.for_config(config, model, params, sharding.data_mesh())
  start = time.perf_counter()
  lake_runs.score_runs(scorer, runs)  # returns host floats: the work is done when it returns
  first = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    lake_runs.score_runs(scorer, runs)
    seconds.append(time.perf_counter() - start)
  trials = sum(len(run.queries) for run in runs)
  return {'dtype': config.model.dtype, 'runs': len(runs), 'trials': trials, 'first_call_s': first,
          'median_s': statistics.median(seconds), 'seconds': seconds}


def _number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
  return '-' if value is None else f'{value / scale:.{digits}f}'


def markdown_table(rows: list[Row]) -> str:
  """The results as a markdown table."""
  lines = ['| mode | batch | dtype | steps/call | compile s | step ms | pairs/s | XLA GFLOP/step | '
           'analytic GFLOP/step | TFLOP/s | % of peak |',
           '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r.mode} | {r.batch_size} | {r.dtype} | {r.steps_per_call} | {r.compile_s:.1f} | '
                 f'{r.step_ms:.2f} | {r.pairs_per_s:.1f} | {_number(r.xla_flops_per_step, 1e9, 2)} | '
                 f'{_number(r.analytic_flops_per_step, 1e9, 2)} | {_number(r.tflops, digits=3)} | '
                 f'{_number(r.peak_fraction, 0.01, 2)} |')
  return '\n'.join(lines)


def oneshot_table(results: list[dict]) -> str:
  lines = ['| dtype | runs | trials | first call s | median s | trials/s |', '|---|---:|---:|---:|---:|---:|']
  for r in results:
    lines.append(f'| {r["dtype"]} | {r["runs"]} | {r["trials"]} | {r["first_call_s"]:.3f} | {r["median_s"]:.3f} | '
                 f'{r["trials"] / r["median_s"]:.0f} |')
  return '\n'.join(lines)


def environment() -> dict:
  """What the numbers were measured on; the load average tells whether a CPU figure was shared."""
  devices = jax.devices()
  return {'jax': jax.__version__, 'python': platform.python_version(), 'backend': jax.default_backend(),
          'device_kind': devices[0].device_kind, 'devices': len(devices), 'processes': jax.process_count(),
          'host_cpus': os.cpu_count(), 'load_average_1min': os.getloadavg()[0]}


def run(config: ml_collections.ConfigDict, *, batch_sizes: list[int], dtypes: list[str], steps_per_call: int,
        data: str, image_channels: int, warmup: int, steps: int, peak_tflops: float) -> list[Row]:
  """Every (batch size, dtype) measurement, in order."""
  image_set = training_images(config, data, image_channels)
  mesh = sharding.data_mesh()
  layout = samplers.class_layout(image_set.labels, image_set.groups)
  device_data = train.put_dataset(image_set, layout, config, mesh)  # shard_dataset is the same in every row
  rows = []
  for batch_size in batch_sizes:
    for dtype in dtypes:
      measured = variant(config, device_resident=True, **{'batch.size': batch_size, 'model.dtype': dtype,
                                                          'train.steps_per_call': steps_per_call})
      logging.info('measuring batch %d, %s', batch_size, dtype)
      rows += benchmark(measured, image_set, device_data, mesh, warmup=warmup, steps=steps,
                        peak_tflops=peak_tflops)
  return rows


def _batch_sizes(values: list[str] | None, default: int) -> list[int]:
  try:
    sizes = [int(v) for v in values] if values else [default]
  except ValueError:
    raise UserError(f'--batch_sizes must be integers, got {",".join(values)}') from None
  if min(sizes) < 1:
    raise UserError('--batch_sizes must be positive')
  return sizes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  if config is None:  # not mark_flags_as_required: that binds every tool sharing absl's flags in a process
    sys.exit('error: give --config=configs/<task>.py[:variant]')
  try:
    rows = run(config, batch_sizes=_batch_sizes(FLAGS.batch_sizes, config.batch.size),
               dtypes=FLAGS.dtypes or [config.model.dtype],
               steps_per_call=FLAGS.steps_per_call or config.train.steps_per_call, data=FLAGS.data,
               image_channels=FLAGS.image_channels, warmup=FLAGS.warmup, steps=FLAGS.steps,
               peak_tflops=FLAGS.peak_tflops)
    oneshot = []
    if FLAGS.oneshot_runs:
      runs = oneshot_runs(config, FLAGS.data, FLAGS.oneshot_runs)
      oneshot = [time_oneshot(variant(config, **{'model.dtype': dtype}), runs, FLAGS.steps)
                 for dtype in FLAGS.dtypes or [config.model.dtype]]
  except UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  env = environment()
  print(f'{env["devices"]} x {env["device_kind"]} ({env["backend"]}), jax {env["jax"]}, load average '
        f'{env["load_average_1min"]:.1f} on {env["host_cpus"]} CPUs; median of {FLAGS.steps} calls after '
        f'{FLAGS.warmup} warm-up calls')
  print(markdown_table(rows))
  print(f'TFLOP/s: the analytic FLOP count (XLA\'s where there is none) / median step time; % of peak: of '
        f'{FLAGS.peak_tflops:g} TFLOP/s.')
  if oneshot:
    print(f'One-shot evaluation, fresh network, median of {FLAGS.steps} after the first call:')
    print(oneshot_table(oneshot))
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump({'environment': env, 'peak_tflops': FLAGS.peak_tflops, 'warmup': FLAGS.warmup,
                 'steps': FLAGS.steps, 'config': config.to_dict(),
                 'results': [dataclasses.asdict(r) for r in rows], 'oneshot': oneshot}, f, indent=1,
                default=str)


if __name__ == '__main__':
  app.run(main)
