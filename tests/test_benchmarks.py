"""The throughput benchmark: FLOP counts, cost-analysis handling, and a CPU smoke run of the command."""

import json
import statistics
import subprocess
import sys

import chex
import pytest
from conftest import REPO, synthetic_image_set

from configs import mnist
from siamese_jax import config_schema, samplers, sharding, train
from siamese_jax.errors import UserError

# benchmarks/ is a folder of the repository, not of the installed package: importable from its root only.
sys.path.insert(0, str(REPO))
from benchmarks import checkpoint_load, oneshot_seeds, throughput  # noqa: E402  pylint: disable=wrong-import-position

KOCH_FORWARD_GFLOP = 1.817


def test_koch_tower_forward_flops():
  c = config_schema.base_config()
  flops = throughput.conv_tower_forward_flops((105, 105, 1), c.model.features, c.model.kernel_sizes,
                                              c.model.embedding_dim)
  assert flops / 1e9 == pytest.approx(KOCH_FORWARD_GFLOP, abs=5e-4)


def test_analytic_step_flops_counts_both_images_of_each_pair_three_times():
  c = config_schema.base_config()
  c.batch.size = 32
  assert throughput.analytic_step_flops(c, (105, 105, 1)) / 1e9 == pytest.approx(
      32 * 2 * 3 * KOCH_FORWARD_GFLOP, rel=5e-4)
  c.batch.kind = 'classes'  # M-per-class batches: batch.size images, not pairs
  assert throughput.analytic_step_flops(c, (105, 105, 1)) / 1e9 == pytest.approx(
      32 * 3 * KOCH_FORWARD_GFLOP, rel=5e-4)
  c.model.encoder = 'resnet'
  assert throughput.analytic_step_flops(c, (32, 32, 3)) is None


class _Compiled:

  def __init__(self, analysis):
    self._analysis = analysis

  def cost_analysis(self):
    return self._analysis


@pytest.mark.parametrize('analysis, expected', [
    ({'flops': 5.0, 'bytes accessed': 1.0}, 10.0),  # current jax: a dict
    ([{'flops': 5.0}], 10.0),  # older jax: a list of one dict per program
    ([], None),
    (None, None),
    ({'bytes accessed': 1.0}, None),
    ({'flops': -1.0}, None),  # XLA's "unknown"
])
def test_xla_flops_sums_devices_and_tolerates_every_cost_analysis_form(analysis, expected):
  assert throughput.xla_flops(_Compiled(analysis), num_devices=2) == expected


def test_variant_overrides_a_copy_and_validates():
  c = config_schema.base_config()
  c.lock()
  v = throughput.variant(c, **{'batch.size': 8, 'model.dtype': 'bfloat16'})
  assert (v.batch.size, v.model.dtype, c.batch.size, c.model.dtype) == (8, 'bfloat16', 32, 'float32')
  with pytest.raises(UserError, match='steps_per_call'):
    throughput.variant(c, device_resident=False, **{'train.steps_per_call': 2})


def test_random_images_need_an_image_size():
  c = config_schema.base_config()
  with pytest.raises(UserError, match='data.image_size'):
    throughput.training_images(c, 'synthetic', channels=1)
  c.data.image_size = 12
  image_set = throughput.training_images(c, 'synthetic', channels=3)
  assert image_set.image_shape == (12, 12, 3) and image_set.num_classes > 1


def test_auto_data_falls_back_to_random_images_only_when_asked(monkeypatch):
  def missing(data_config):
    raise UserError('no archive')

  monkeypatch.setattr(throughput.datasets, 'load_splits', missing)
  c = config_schema.base_config()
  c.data.image_size = 10
  assert throughput.training_images(c, 'auto', channels=1).source == 'random images, 10px'
  with pytest.raises(UserError, match='no archive'):
    throughput.training_images(c, 'config', channels=1)


def test_command_on_cpu_writes_consistent_results(tmp_path):
  out = tmp_path / 'throughput.json'
  batch, steps_per_call, peak = 8, 2, 100.0
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.throughput', '--config=configs/omniglot.py:smoke', f'--batch_sizes={batch}',
       '--dtypes=float32', '--steps=2', '--warmup=1', f'--steps_per_call={steps_per_call}', '--data=synthetic',
       f'--peak_tflops={peak}', '--oneshot_runs=3', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| synthetic | 8 | float32 | 1 |' in result.stdout
  report = json.loads(out.read_text())
  assert report['environment']['devices'] == 2  # conftest's simulated CPU devices, inherited
  rows = report['results']
  assert [(r['mode'], r['steps_per_call']) for r in rows] == [('synthetic', 1), ('end_to_end', steps_per_call)]
  for r in rows:
    assert r['batch_size'] == batch and r['dtype'] == 'float32' and r['data'] != ''
    assert r['compile_s'] > 0 and len(r['step_ms_samples']) == 2 and min(r['step_ms_samples']) > 0
    assert r['step_ms'] == pytest.approx(statistics.median(r['step_ms_samples']))
    assert r['pairs_per_s'] == pytest.approx(batch / (r['step_ms'] / 1e3))
    assert r['flops_source'] == 'analytic'
    # XLA:CPU's count of the training step (no input gradient for the first layer) is close to 3x forward.
    assert 0.8 < r['xla_flops_per_step'] / r['analytic_flops_per_step'] < 1.1
    assert r['tflops'] == pytest.approx(r['analytic_flops_per_step'] / (r['step_ms'] / 1e3) / 1e12)
    assert r['peak_fraction'] == pytest.approx(r['tflops'] / peak)
  [oneshot] = report['oneshot']
  assert (oneshot['dtype'], oneshot['runs'], oneshot['trials'], len(oneshot['seconds'])) == ('float32', 3, 60, 2)
  assert oneshot['median_s'] == pytest.approx(statistics.median(oneshot['seconds'])) and oneshot['median_s'] > 0
  assert '| float32 | 3 | 60 |' in result.stdout


def test_command_reports_an_indivisible_batch_in_one_line():
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.throughput', '--config=configs/omniglot.py:smoke', '--batch_sizes=3',
       '--data=synthetic'], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 2
  assert 'error: batch size 3 is not divisible by the 2 devices' in result.stderr


def test_benchmark_measures_m_per_class_batches_for_triplet_loss():
  c = config_schema.base_config()
  c.model.update(features=(4,), kernel_sizes=(3,), embedding_dim=8, head='euclidean')
  c.loss.update(name='triplet', mining='batch_hard')
  c.batch.update(kind='classes', size=8, images_per_class=2)
  c.train.steps_per_call = 2
  image_set = synthetic_image_set(size=8)
  mesh = sharding.data_mesh()
  data = train.put_dataset(image_set, samplers.class_layout(image_set.labels, image_set.groups), c, mesh)
  rows = throughput.benchmark(c, image_set, data, mesh, warmup=0, steps=1, peak_tflops=1.0)
  assert [(r.mode, r.steps_per_call, r.data) for r in rows] == [('synthetic', 1, 'random batch'),
                                                                ('end_to_end', 2, 'synthetic')]
  forward = throughput.conv_tower_forward_flops((8, 8, 1), (4,), (3,), 8)
  assert rows[0].analytic_flops_per_step == 3 * 8 * forward  # 8 images, not 8 pairs
  assert all(r.step_ms > 0 and r.pairs_per_s == pytest.approx(8e3 / r.step_ms) for r in rows)


def test_flop_rate_prefers_the_analytic_count():
  c = config_schema.base_config()
  row = throughput.Row.from_times(mode='synthetic', config=c, call_seconds=[0.5, 1.0, 2.0], compile_s=1.0,
                                  xla=1e9, analytic=4e12, peak_tflops=8.0, data='x')
  assert (row.flops_source, row.tflops, row.peak_fraction) == ('analytic', 4.0, 0.5)
  row = throughput.Row.from_times(mode='synthetic', config=c, call_seconds=[1.0], compile_s=1.0, xla=2e12,
                                  analytic=None, peak_tflops=8.0, data='x')
  assert (row.flops_source, row.tflops) == ('xla', 2.0)


def test_oneshot_runs_are_omniglot_validation_drawings_unless_synthetic():
  c = config_schema.base_config()
  c.data.image_size = 12
  runs = throughput.oneshot_runs(c, 'synthetic', num_runs=2, ways=5)
  assert [r.name for r in runs] == ['run01', 'run02']
  chex.assert_shape([runs[0].support, runs[0].queries], (5, 12, 12, 1))
  assert sorted(runs[1].answers.tolist()) == list(range(5))


def test_checkpoint_load_reads_a_third_of_the_state_for_the_parameters():
  results = checkpoint_load.run(mnist.get_config('smoke'), image_size=28, repeats=2)
  (whole_seconds, whole_mib), (params_seconds, params_mib) = results['whole state'], results['parameters only']
  assert whole_mib == pytest.approx(3 * params_mib, rel=1e-3)  # parameters and Adam's two moments
  assert whole_seconds > 0 and params_seconds > 0
  (waited, saved_mib), (on_disk, _) = results['save (the loop waits)'], results['save (until on disk)']
  assert saved_mib == pytest.approx(whole_mib, rel=1e-3)
  assert 0 < waited <= on_disk


def _finished_run(workdir, accuracy, validations):
  workdir.mkdir(parents=True)
  (workdir / 'results.json').write_text(json.dumps({
      'step': 40, 'training_minutes': 1.5, 'data': 'omniglot',
      'metrics': {'lake_runs/accuracy': accuracy, 'lake_runs/ci95': 0.02}}))
  (workdir / 'history.json').write_text(json.dumps(
      [{'step': 20 * (i + 1), 'oneshot_20way/accuracy': v} for i, v in enumerate(validations)]))


def test_oneshot_seeds_reads_a_finished_run_and_summarizes_seeds(tmp_path):
  _finished_run(tmp_path / 'a', 0.8, [0.6, 0.7, 0.65])
  row = oneshot_seeds.read_run(str(tmp_path / 'a'), 'oneshot_20way/accuracy')
  assert (row['step'], row['best_validation'], row['test']['lake_runs/accuracy']) == (40, 0.7, 0.8)
  summary = oneshot_seeds.summarize([{'test': {'lake_runs/accuracy': 0.8, 'lake_runs/ci95': 0.02}},
                                     {'test': {'lake_runs/accuracy': 0.9, 'lake_runs/ci95': 0.03}}])
  assert list(summary) == ['lake_runs/accuracy']  # intervals are not averaged as if they were scores
  chex.assert_trees_all_close(summary['lake_runs/accuracy'], {
      'mean': 0.85, 'min': 0.8, 'max': 0.9, 'sd_between_seeds': 0.1 / 2 ** 0.5, 'seeds': 2})
  with pytest.raises(UserError, match='no finished run'):
    oneshot_seeds.read_run(str(tmp_path / 'missing'), 'oneshot_20way/accuracy')


@pytest.mark.parametrize('seeds', [['0', 'x'], ['1', '1'], []])
def test_oneshot_seeds_rejects_bad_seed_lists(seeds):
  with pytest.raises(UserError, match='--seeds'):
    oneshot_seeds.parse_seeds(seeds)


def test_oneshot_seeds_reports_finished_seeds_without_training_them(tmp_path):
  _finished_run(tmp_path / 'seed0', 0.8, [0.7])
  _finished_run(tmp_path / 'seed3', 0.9, [0.75])
  out = tmp_path / 'seeds.json'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.oneshot_seeds', '--config=configs/omniglot.py:cpu', '--seeds=0,3',
       f'--workdir={tmp_path}', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| 3 | 40 | 1.5 | trained earlier | 75.00% | 90.00% ± 2.00 |' in result.stdout
  assert 'lake_runs/accuracy: 85.00% over 2 seeds (from 80.00% to 90.00%' in result.stdout
  assert json.loads(out.read_text())['summary']['lake_runs/accuracy']['mean'] == pytest.approx(0.85)
  assert not (tmp_path / 'seed0' / 'checkpoints').exists()
