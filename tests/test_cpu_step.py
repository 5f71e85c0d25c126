"""The side-by-side step benchmark: its JAX side is the project's own training step, run on a tiny config."""

import sys

import chex
import jax
import numpy as np
import pytest
from conftest import REPO

from configs import omniglot as omniglot_config
from siamese_jax import models

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of the repository, not of the package
from benchmarks import conv_layers, cpu_step, throughput  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import


def test_importable_beside_the_throughput_benchmark():
  """Both are imported above in one process: neither may claim absl's --config on import."""
  assert 'config' in throughput.FLAGS and callable(cpu_step.define_flags)


@pytest.mark.parametrize('layer', ['5x3x8x2', '9x5x12x2x4', '1x5x12x2x4'])
def test_conv_layer_benchmark_sides_compute_the_same_layer(layer):
  """SAME 3x3 (XLA, Winograd) and VALID (XLA, FFT) layers; a first layer without its input gradient."""
  _, args, sides = conv_layers.layer_sides(layer)
  assert set(sides) == ({'xla', 'winograd'} if layer.count('x') == 3 else {'xla', 'fft'})
  outputs = {name: fn(*args) for name, fn in sides.items()}
  reference = outputs.pop('xla')
  assert len(reference) == (2 if layer.startswith('1x') else 3)  # output, (input gradient,) kernel gradient
  for other in outputs.values():
    chex.assert_trees_all_close(other, reference, atol=1e-4)
  assert set(conv_layers.median_ms(sides, args, repeats=1)) == set(sides)


def tiny_config(name):
  config = omniglot_config.get_config(name)
  config.data.image_size = 16
  config.model.features = (8, 8)
  if name == 'smoke':
    config.model.kernel_sizes = (3, 3)
    config.batch.size = 4
  else:
    config.batch.size, config.batch.classes_per_group = 8, 4
  return config


@pytest.mark.parametrize('name', ['smoke', 'cpu'])
def test_jax_side_trains_on_its_fixed_batch(name):
  config = tiny_config(name)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, cpu_step.batch_shape(config), dtype=np.uint8)
  assert images.shape == ((4, 2, 16, 16, 1) if name == 'smoke' else (8, 16, 16, 1))
  labels = np.arange(len(images)) % 2 if name == 'smoke' else np.repeat(np.arange(4), 2)
  call, state = cpu_step.jax_step(config, images, labels.astype(np.int32))
  seconds = cpu_step.alternate({'jax': (call, state)}, warmup=1, repeats=3)
  assert len(seconds['jax']) == 3 and min(seconds['jax']) > 0


def test_pytorch_reference_matches_the_flax_tower_shapes():
  torch = pytest.importorskip('torch', reason='PyTorch comes with the benchmark extra only')
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  for name in ('smoke', 'cpu'):
    config = tiny_config(name)
    network = torch_reference.build(config)
    count = sum(p.numel() for p in network.parameters())
    params = models.init_params(models.build(config.model), (16, 16, 1), jax.random.key(0))
    assert count == sum(p.size for p in jax.tree.leaves(params))
    x = torch.rand(8, 1, 16, 16)
    labels = torch.from_numpy(np.arange(4) % 2 if name == 'smoke' else np.repeat(np.arange(4), 2))
    assert torch.isfinite(torch_reference.loss(network, config, x, labels))


@pytest.mark.parametrize('final_pool', ['2x2', 'max', 'mean'])
def test_pytorch_conv_blocks_compute_the_flax_embedding(final_pool):
  """With the Flax weights copied in, the reference tower gives the same embeddings: the same arithmetic."""
  torch = pytest.importorskip('torch', reason='PyTorch comes with the benchmark extra only')
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  config = tiny_config('cpu')
  config.data.image_size, config.model.features, config.model.final_pool = 12, (8, 8, 16), final_pool  # 12 -> 6 -> 3
  config.model.norm_groups = 2  # enough values per group on the last 1x1 map for a well-conditioned variance
  model = models.build(config.model)
  params = models.init_params(model, (12, 12, 1), jax.random.key(0))['encoder']
  network = torch_reference.build(config)
  convs = [m for m in network.encoder if isinstance(m, torch.nn.Conv2d)]
  norms = [m for m in network.encoder if isinstance(m, torch.nn.GroupNorm)]
  with torch.no_grad():
    for i, (conv, norm) in enumerate(zip(convs, norms)):
      conv.weight.copy_(torch.from_numpy(np.asarray(params[f'conv{i}']['kernel']).transpose(3, 2, 0, 1)))
      norm.weight.copy_(torch.from_numpy(np.asarray(params[f'norm{i}']['scale'])))
      norm.bias.copy_(torch.from_numpy(np.asarray(params[f'norm{i}']['bias'])))
    images = np.random.default_rng(0).random((5, 12, 12, 1), np.float32)
    expected = model.apply({'params': {'encoder': params}}, images, method=models.SiameseNet.embed)
    got = network.encoder(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
