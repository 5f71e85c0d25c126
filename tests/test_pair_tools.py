"""The tools on a trained run: show_pairs draws training's pairs, compare scores two image files, evaluate
scores evaluator blocks; all agree with training on which checkpoint is best."""

import json
import math
import os
import re
import subprocess
import sys

import chex
import lake_format
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, synthetic_image_set
from PIL import Image
from test_train import tiny_config

from siamese_jax import checkpoints, cli, compare, datasets, evaluate, evaluators, inference, lake_runs, models
from siamese_jax import plots, show_pairs, train
from siamese_jax.datasets import image_files, omniglot
from siamese_jax.errors import UserError

CONFIG = str(REPO / 'configs' / 'omniglot.py')


@pytest.fixture(scope='module')
def splits():
  return {'train': synthetic_image_set(seed=0), 'validation': synthetic_image_set(seed=1)}


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch, splits):
  monkeypatch.setattr(datasets, 'load_splits', lambda data_config: splits)


def workdir_config():
  """The config of the `workdir` run."""
  config = tiny_config(num_steps=4, eval_every=2)
  config.data.image_size = 16
  return config


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, splits):
  """A run trained for four steps on the synthetic splits (16 px, named omniglot: files are inverted), and
  what training returned.

  Its two validations are given the scores 0.9 and 0.5, so the best checkpoint (step 2) is not the latest
  (step 4): the tools must use the best.
  """
  path = str(tmp_path_factory.mktemp('run'))
  scores = iter([0.9, 0.5])
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(datasets, 'load_splits', lambda data_config: splits)
    patch.setattr(train.evaluators, 'run_all', lambda evals, scorer: {'oneshot/accuracy': next(scores)})
    best = train.train_and_evaluate(workdir_config(), path)
  return path, best


@pytest.fixture(scope='module')
def workdir(trained_run):
  return trained_run[0]


def best_checkpoint_similarity(workdir):
  """Scores pairs of uint8 images [N, H, W, C] with the best checkpoint's parameters, restored here with
  Orbax from the checkpoint files and run through the whole Siamese net (not the tools' loader and scorer)."""
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  assert sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit()) == [2, 4]
  model = models.build(workdir_config().model)
  item = {'params': jax.eval_shape(lambda: models.init_params(model, (16, 16, 1), jax.random.key(0)))}
  args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item))
  state, latest = (ocp.PyTreeCheckpointer().restore(os.path.join(checkpoint_dir, step, 'state'), args=args)
                   for step in ('2', '4'))
  with pytest.raises(AssertionError):  # the two checkpoints score differently
    chex.assert_trees_all_close(state['params'], latest['params'])

  def similarity(images_a, images_b):
    pairs = jnp.stack([jnp.asarray(images_a), jnp.asarray(images_b)], axis=1).astype(jnp.float32) / 255.0
    return np.asarray(model.apply({'params': state['params']}, pairs))  # the head's logit: higher = more alike

  return similarity


def run_main(module, monkeypatch, *args):
  """Runs a tool's command line in this process, as `python -m` would parse it."""
  argv = [module.__name__, *args]
  monkeypatch.setattr(sys, 'argv', argv)  # config overrides are read from sys.argv
  module.FLAGS.unparse_flags()
  module.main(cli.parse_flags(argv, module.FLAGS))


def assert_one_line_error(exit_info, fragment):
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith('error: ') and '\n' not in message, message
  assert fragment in message


def write_png(path, image):
  """Writes uint8 [H, W, 1] as a grayscale PNG file."""
  Image.fromarray(image[..., 0]).save(path)
  return str(path)


def test_show_pairs_writes_training_pairs_with_the_config_fraction(tmp_path, monkeypatch, capsys):
  out = tmp_path / 'pairs.png'
  run_main(show_pairs, monkeypatch, f'--config={CONFIG}:smoke', f'--out={out}', '--rows=3', '--cols=4',
           '--config.batch.positive_fraction=0.25')
  assert '3 positive and 9 negative pairs' in capsys.readouterr().out
  with Image.open(out) as image:
    assert image.format == 'PNG' and min(image.size) > 100


def test_draw_pairs_positive_pairs_share_a_class(splits):
  """Every class of the synthetic set is one pattern, so same-class pairs differ only by sparse noise."""
  config = ml_collections.ConfigDict({'positive_fraction': 0.5, 'same_group_prob': 1.0})
  pairs, labels = show_pairs.draw_pairs(splits['train'], config, 40, seed=3)
  chex.assert_shape(pairs, (40, 2, 16, 16, 1))
  differing = np.mean(pairs[:, 0] != pairs[:, 1], axis=(1, 2, 3))
  assert labels.sum() == 20
  assert differing[labels == 1].max() < differing[labels == 0].min()


def test_show_pairs_scores_pairs_with_a_trained_run(tmp_path, monkeypatch, workdir):
  drawn, montage = {}, plots.pair_montage

  def spy(path, images_a, images_b, labels, scores, *args, **kwargs):
    drawn.update(images_a=images_a, images_b=images_b, scores=scores)
    return montage(path, images_a, images_b, labels, scores, *args, **kwargs)

  monkeypatch.setattr(plots, 'pair_montage', spy)
  run_main(show_pairs, monkeypatch, f'--workdir={workdir}', f'--out={tmp_path / "scored.png"}', '--rows=2',
           '--cols=2')  # no --config: the run's own
  expected = best_checkpoint_similarity(workdir)(drawn['images_a'], drawn['images_b'])
  chex.assert_trees_all_close(drawn['scores'], expected, rtol=1e-5, atol=1e-6)
  assert (tmp_path / 'scored.png').exists()


@pytest.mark.parametrize('args,fragment', [
    (('--config=missing.py',), 'config file missing.py not found'),
    ((f'--config={CONFIG}', '--config.batch.nope=1'), 'nope'),
    ((f'--config={CONFIG}', '--rows=0'), '--rows'),
    ((f'--config={CONFIG}', '--split=test'), 'not a split'),
    ((), 'give --config'),
])
def test_show_pairs_bad_input_is_one_line(tmp_path, monkeypatch, args, fragment):
  with pytest.raises(SystemExit) as exit_info:
    run_main(show_pairs, monkeypatch, f'--out={tmp_path / "pairs.png"}', *args)
  assert_one_line_error(exit_info, fragment)
  assert not (tmp_path / 'pairs.png').exists()


def test_compare_prints_the_scorer_similarity_symmetrically(tmp_path, monkeypatch, capsys, workdir, splits):
  images = splits['validation'].images[[0, 7]]
  # Omniglot files are dark on light: the tool must invert them back into the training images.
  a, b = (write_png(tmp_path / f'{name}.png', 255 - image) for name, image in zip('ab', images))
  printed = []
  for first, second in ((a, b), (b, a)):
    run_main(compare, monkeypatch, f'--workdir={workdir}', f'--image_a={first}', f'--image_b={second}',
             f'--out={tmp_path / "comparison.png"}')
    printed.append(capsys.readouterr().out)
  similarities = [float(re.search(r'similarity (\S+)', out).group(1)) for out in printed]
  same = float(re.search(r'P\(same\) (\S+)', printed[0]).group(1))

  expected = float(best_checkpoint_similarity(workdir)(images[:1], images[1:])[0])
  np.testing.assert_allclose(similarities, [expected, expected], atol=2e-6)
  np.testing.assert_allclose(same, 1 / (1 + math.exp(-expected)), atol=1e-4)
  with Image.open(tmp_path / 'comparison.png') as image:
    assert image.format == 'PNG'


def test_compare_reads_files_as_the_omniglot_loader_does(tmp_path):
  """A black-on-white drawing, shrunk: exactly the array the dataset loader makes of it."""
  rng = np.random.default_rng(0)
  drawing = np.where(rng.random((105, 105)) > 0.9, 0, 255).astype(np.uint8)
  path = tmp_path / 'drawing.png'
  Image.fromarray(drawing).save(path)
  form = datasets.input_form(ml_collections.ConfigDict({'name': 'omniglot', 'image_size': 32}))
  chex.assert_trees_all_equal(image_files.to_model_input(image_files.read_image(str(path)), form),
                              omniglot.decode_png(path.read_bytes(), 32))


def test_compare_input_form_by_dataset():
  form = lambda **data: datasets.input_form(ml_collections.ConfigDict(data))
  assert form(name='mnist') == image_files.InputForm(28, 1, invert=False)
  assert form(name='cifar100').channels == 3
  assert form(name='malaria', image_size=64, channels=3) == image_files.InputForm(64, 3, invert=False)
  with pytest.raises(UserError, match='unknown'):
    form(name='unknown')


def test_compare_fills_transparency_with_the_dataset_background():
  """A dark stroke on a transparent background reads like the same stroke on white paper."""
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[2:6, 3, 3] = 255  # an opaque black stroke; elsewhere transparent black
  form = image_files.InputForm(8, 1, invert=True)
  image = image_files.to_model_input(Image.fromarray(rgba, 'RGBA'), form)
  expected = np.zeros((8, 8, 1), np.uint8)
  expected[2:6, 3] = 255
  chex.assert_trees_all_equal(image, expected)


def test_compare_workdir_without_checkpoint_is_one_line(tmp_path, monkeypatch, splits):
  image = write_png(tmp_path / 'a.png', splits['train'].images[0])
  run = tmp_path / 'empty_run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(tiny_config().to_dict()))
  with pytest.raises(SystemExit) as exit_info:
    run_main(compare, monkeypatch, f'--workdir={run}', f'--image_a={image}', f'--image_b={image}')
  assert_one_line_error(exit_info, 'no checkpoint')


@pytest.mark.parametrize('bad,fragment', [
    ('missing.png', 'not found'),
    ('notes.png', 'not an image file'),
    ('.', 'cannot read image file'),
])
def test_compare_bad_image_file_is_one_line(tmp_path, monkeypatch, splits, bad, fragment):
  good = write_png(tmp_path / 'a.png', splits['train'].images[0])
  (tmp_path / 'notes.png').write_text('not an image')
  with pytest.raises(SystemExit) as exit_info:
    run_main(compare, monkeypatch, '--workdir=unused', f'--image_a={good}', f'--image_b={tmp_path / bad}')
  assert_one_line_error(exit_info, fragment)


def test_compare_command_line_error_exits_nonzero_with_only_that_line(tmp_path):
  """The files are read before the run is loaded: a bad one costs no model load and logs nothing else."""
  (tmp_path / 'notes.png').write_text('not an image')
  result = subprocess.run([sys.executable, '-m', 'siamese_jax.compare', f'--workdir={tmp_path}',
                           f'--image_a={tmp_path / "notes.png"}', f'--image_b={tmp_path / "notes.png"}',
                           f'--out={tmp_path / "c.png"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert result.stderr == f'error: {tmp_path / "notes.png"} is not an image file that Pillow can read\n'
  assert not (tmp_path / 'c.png').exists()


def test_training_and_the_tools_agree_on_the_best_checkpoint(trained_run):
  path, best = trained_run
  manager = checkpoints.Manager(path, workdir_config().train.best_metric)
  assert best['step'] == manager.best_step() == inference.load_trained(path)[1] == 2
  assert inference.load_trained(path, 'latest')[1] == 4


def test_evaluate_scores_lake_runs_without_the_dataset(tmp_path, monkeypatch, capsys, workdir, splits):
  """Runs on disk are read at the model's input size, so the run's dataset is never loaded."""
  images, labels = splits['validation'].images, splits['validation'].labels
  support = np.stack([images[np.flatnonzero(labels == c)[0]] for c in range(5)])
  queries = np.stack([images[np.flatnonzero(labels == c)[1]] for c in (3, 0, 4, 1, 2, 2)])
  answers = np.array([3, 0, 4, 1, 2, 2], np.int32)
  lake_format.write_runs(tmp_path / 'runs', [lake_runs.LakeRun('run01', support, queries, answers)])
  monkeypatch.setattr(datasets, 'load_splits', lambda data_config: pytest.fail('the dataset was loaded'))
  run_main(evaluate, monkeypatch, f'--workdir={workdir}', f'--lake_runs={tmp_path / "runs"}')
  assert 'checkpoint at step 2 (best)' in capsys.readouterr().out
  similarity = best_checkpoint_similarity(workdir)  # the best checkpoint's, read with Orbax directly
  scores = similarity(np.repeat(queries, 5, axis=0), np.tile(support, (6, 1, 1, 1))).reshape(6, 5)
  chosen = np.argmax(scores, axis=1)
  written = json.loads(open(os.path.join(workdir, 'evaluation.json')).read())
  assert written['step'] == 2
  assert written['metrics']['lake_runs/accuracy'] == pytest.approx(np.mean(chosen == answers))


def test_evaluate_scores_a_oneshot_block_and_the_configs_blocks(monkeypatch, capsys, workdir, splits):
  block = dict(kind='oneshot', split='validation', ways=4, shots=1, episodes=10, seed=3)
  run_main(evaluate, monkeypatch, f'--workdir={workdir}', '--evaluator=kind=oneshot,split=validation,ways=4,'
           'shots=1,episodes=10,seed=3', '--blocks=evaluators')
  printed = capsys.readouterr().out
  config, _, scorer = inference.load_trained(workdir)
  expected = evaluators.run_all(evaluators.build_all({'oneshot': block}, splits), scorer)['oneshot/accuracy']
  metrics = json.loads(open(os.path.join(workdir, 'evaluation.json')).read())['metrics']
  assert metrics['oneshot_1/accuracy'] == pytest.approx(expected)  # the config's block is named oneshot
  assert set(metrics) >= {f'{name}/accuracy' for name in config.evaluators} and 'oneshot_1/accuracy' in printed


@pytest.mark.parametrize('args,fragment', [
    ((), 'give what to score'),
    (('--blocks=tests',), 'is not in the run\'s config'),
    (('--evaluator=ways=5',), 'give its kind'),
    (('--evaluator=kind=oneshot', '--checkpoint=first'), '--checkpoint=first'),
    (('--lake_runs=/nowhere',), 'not found at /nowhere'),
])
def test_evaluate_bad_input_is_one_line(monkeypatch, workdir, args, fragment):
  with pytest.raises(SystemExit) as exit_info:
    run_main(evaluate, monkeypatch, f'--workdir={workdir}', *args)
  assert_one_line_error(exit_info, fragment)


@pytest.mark.parametrize('tool,args,fragment', [
    ('evaluate', ['--lake_runs=runs'], 'is not a training workdir (no config.json)'),
    ('compare', ['--image_a=a.png', '--image_b=b.png'], 'image file a.png not found'),  # files are read first
    ('show_pairs', [], 'is not a training workdir (no config.json)'),
    ('index', ['build', '--split=train', '--out=db'], 'is not a training workdir (no config.json)'),
])
def test_every_tool_exits_1_with_one_error_line(tmp_path, tool, args, fragment):
  result = subprocess.run([sys.executable, '-m', f'siamese_jax.{tool}', f'--workdir={tmp_path}', *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1 and fragment in result.stderr
