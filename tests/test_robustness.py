"""Training that survives kills, preemption, unreadable checkpoints, divergence and bad workdirs, losing nothing.

The kill / preemption tests run the real command line (tests/robustness_worker.py: main.py on synthetic data)
in subprocesses; the rest run in-process on test_train.py's tiny synthetic task.
"""

import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import synthetic_splits, tiny_config  # noqa: F401  (a fixture)

from siamese_jax import checkpoints, config_schema, files, inference, models, plots, preemption, train
from siamese_jax.errors import UserError

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = [sys.executable, os.path.join(TESTS, 'robustness_worker.py'),
          f'--config={os.path.join(TESTS, "robustness_worker.py")}']
METRIC = 'oneshot/accuracy'


def run_worker(workdir, signal_at_step=None, sig=None, *overrides):
  """Runs the worker in `workdir`; sends `sig` once it has logged step `signal_at_step`. -> (exit status, stderr)."""
  proc = subprocess.Popen(WORKER + [f'--workdir={workdir}', *overrides], stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    logged = re.search(r'train\.py:\d+\] step (\d+)/', line)
    if sig is not None and logged and int(logged.group(1)) >= signal_at_step:
      proc.send_signal(sig)
      sig = None
  return proc.wait(timeout=600), ''.join(lines)


def step_lines(stderr):
  return [int(s) for s in re.findall(r'train\.py:\d+\] step (\d+)/', stderr)]


@pytest.fixture(scope='module')
def interrupted_runs(tmp_path_factory):
  """The worker's 40 steps run once without a break, and once killed twice (SIGKILL at seeded random steps),
  preempted once (SIGTERM) and resumed each time by the same command."""
  root = tmp_path_factory.mktemp('robustness')
  reference = str(root / 'reference')
  status, stderr = run_worker(reference)
  assert status == 0, stderr[-3000:]
  interrupted = str(root / 'interrupted')
  rng = random.Random(16)
  kills = sorted(rng.sample(range(3, 30), 2))
  term_at = rng.randrange(kills[1] + 1, 38)
  runs = []
  for at, sig in ((kills[0], signal.SIGKILL), (kills[1], signal.SIGKILL), (term_at, signal.SIGTERM), (None, None)):
    runs.append((at, sig) + run_worker(interrupted, at, sig))
  return reference, interrupted, runs


@pytest.mark.slow  # five worker processes, sharing one fixture
def test_kills_and_a_preemption_end_where_an_uninterrupted_run_ends(interrupted_runs):
  reference, interrupted, runs = interrupted_runs
  for at, sig, status, stderr in runs[:2]:
    assert status == -signal.SIGKILL and max(step_lines(stderr)) >= at, stderr[-3000:]
  assert runs[-1][2] == 0, runs[-1][3][-3000:]
  # Each resume started from the checkpoint before its kill (saved every 5 steps; the newest may still have
  # been in writing, which is then removed unfinished).
  for (at, _, _, stderr), (_, _, _, next_stderr) in zip(runs[:2], runs[1:]):
    resumed = int(re.search(r'; from step (\d+)', next_stderr).group(1))
    assert resumed % 5 == 0 and at - 10 <= resumed <= max(step_lines(stderr)), (at, resumed)

  expected, got = (checkpoints.Manager(w, METRIC) for w in (reference, interrupted))
  chex.assert_trees_all_equal(got.restore_params(40), expected.restore_params(40))
  # The best checkpoint is the best of the whole run: the same step kept, the same test results.
  assert got.steps() == expected.steps()
  results = [json.load(open(os.path.join(w, 'results.json'))) for w in (reference, interrupted)]
  assert results[1]['step'] == results[0]['step'] == max(
      reversed(expected.history(40)), key=lambda h: h[METRIC])['step']
  assert results[1]['metrics'] == results[0]['metrics']
  without_time = lambda history: [{k: v for k, v in h.items() if k != 'elapsed_s'} for h in history]
  assert without_time(got.history(40)) == without_time(expected.history(40))
  assert without_time(json.load(open(os.path.join(interrupted, 'history.json')))) == without_time(
      expected.history(40))
  assert not glob.glob(os.path.join(interrupted, 'checkpoints', '*tmp*'))


@pytest.mark.slow  # five worker processes, sharing one fixture
def test_sigterm_saves_at_the_next_step_and_exits_zero(interrupted_runs):
  _, _, runs = interrupted_runs
  at, _, status, stderr = runs[2]
  assert status == 0, stderr[-3000:]
  stopped = int(re.search(r'stopped by SIGTERM at step (\d+), checkpoint saved in \S+: run the same command to '
                          'resume', stderr).group(1))
  assert stopped >= at and stopped == max(step_lines(stderr))
  assert 'test metrics' not in stderr  # a preempted run stops at once
  assert int(re.search(r'; from step (\d+)', runs[3][3]).group(1)) == stopped


def make_state(seed=0, scale=1.0):
  config = tiny_config()
  model = models.build(config.model)
  state = train.init_state(config, model, train.make_optimizer(config), (16, 16, 1), jax.random.key(seed))
  return config, state.replace(params=jax.tree.map(lambda p: p * scale, state.params))


def test_best_checkpoint_is_kept_across_resumes(tmp_path):
  _, state = make_state()
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)
  manager.save(10, state, {METRIC: 0.9}, [])
  manager.close()
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)  # a resumed run
  manager.save(20, state, {METRIC: 0.5}, [])
  manager.save(25, state, {}, [])  # between validations: no metrics
  manager.save(30, state, {METRIC: 0.6}, [])
  manager.close()
  assert checkpoints.Manager(str(tmp_path), METRIC).steps() == [10, 30]


def corrupt(step_dir, how):
  """Damages a saved checkpoint as a full disk or a careless hand would."""
  state_dir = os.path.join(step_dir, 'state')
  if how == 'truncated':
    for name in glob.glob(os.path.join(state_dir, 'ocdbt.process_*', 'd', '*')):
      with open(name, 'r+b') as f:
        f.truncate(os.path.getsize(name) // 2)
  elif how == 'manifests deleted':
    for name in glob.glob(os.path.join(state_dir, '**', 'manifest.ocdbt'), recursive=True):
      os.remove(name)


@pytest.mark.parametrize('how', ['truncated', 'manifests deleted'])
def test_unreadable_checkpoint_is_reported_set_aside_and_the_previous_one_resumed(tmp_path, how, caplog):
  _, older = make_state(seed=0)
  _, newer = make_state(seed=1)
  older = older.replace(step=jnp.asarray(10))
  newer = newer.replace(step=jnp.asarray(20))
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)
  manager.save(10, older, {METRIC: 0.9}, [{'step': 10}])  # the best, kept beside the latest
  manager.save(20, newer, {METRIC: 0.6}, [{'step': 10}, {'step': 20}])
  manager.close()
  corrupt(str(tmp_path / 'checkpoints' / '20'), how)
  _, template = make_state(seed=2)
  checkpoints.check_compatible(str(tmp_path), template)  # metadata still reads: nothing to refuse
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)
  with caplog.at_level('WARNING'):
    restored, history = manager.restore_latest(template)
  chex.assert_trees_all_equal(restored.params, older.params)
  assert history == [{'step': 10}] and int(restored.step) == 10
  warnings = [r.getMessage() for r in caplog.records if 'is unreadable' in r.getMessage()]
  assert len(warnings) == 1 and '/checkpoints/20 is unreadable' in warnings[0] and '\n' not in warnings[0]
  # Kept for inspection, out of the way of the step 20 that training saves again.
  assert manager.steps() == [10]
  assert os.listdir(tmp_path / checkpoints.UNREADABLE_SUBDIR)[0].startswith('20.')
  manager.save(20, newer, {METRIC: 0.6}, [])
  manager.close()
  assert checkpoints.Manager(str(tmp_path), METRIC).steps() == [10, 20]


def test_orphaned_temporary_folders_are_removed_by_training_only(tmp_path):
  _, state = make_state()
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)
  manager.save(10, state, {METRIC: 0.5}, [])
  manager.close()
  orphan = tmp_path / 'checkpoints' / '20.orbax-checkpoint-tmp-1234'
  shutil.copytree(tmp_path / 'checkpoints' / '10', orphan)
  checkpoints.Manager(str(tmp_path), METRIC).close()  # a reading tool: another process's save may be in flight
  assert orphan.exists()
  manager = checkpoints.Manager(str(tmp_path), METRIC, training=True)
  manager.save(20, state, {METRIC: 0.4}, [])
  manager.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20']


@pytest.mark.parametrize('log_every,bad_step,message', [
    (1, 13, 'non-finite loss at step 14'),  # seen in the next step's loss
    (100, 15, 'non-finite parameters after step 15 (a non-finite gradient)'),  # seen in the state before the save at step 15
])
def test_divergence_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, synthetic_splits, monkeypatch,
                                                                     log_every, bad_step, message):
  # The gradient of (1-based) step `bad_step` turned to NaN ahead of the optimizer.
  make_optimizer = train.make_optimizer
  poison = optax.scale_by_schedule(lambda count: jnp.where(count == bad_step - 1, jnp.nan, 1.0))
  monkeypatch.setattr(train, 'make_optimizer', lambda c: optax.chain(poison, make_optimizer(c)))
  config = tiny_config(num_steps=30, log_every=log_every, eval_every=10)
  config.train.checkpoint_every.steps = 5
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match=re.escape(message) + r'; the last good checkpoint is step 10 in \S+/run/'
                     r'checkpoints, which the same command resumes from'):
    train.train_and_evaluate(config, workdir)
  manager = checkpoints.Manager(workdir, METRIC)
  assert manager.steps() == [10]
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(manager.restore_params(10)))

  def no_constants(name):
    raise AssertionError(f'{name} in history.json')

  history = json.loads(open(os.path.join(workdir, 'history.json')).read(), parse_constant=no_constants)
  assert [h['step'] for h in history] == [10]


def poison_objective(monkeypatch, rate):
  """A NaN loss, hence NaN gradients, at a random `rate` of the steps (drawn from each step's own key)."""
  objective = train.objective

  def poisoned(params, images, labels, key, **kwargs):
    loss, metrics = objective(params, images, labels, key, **kwargs)
    loss = loss * jnp.where(jax.random.uniform(jax.random.fold_in(key, 16)) < rate, jnp.nan, 1.0)
    return loss, metrics | {'loss': loss}

  monkeypatch.setattr(train, 'objective', poisoned)


def test_skipped_non_finite_steps_are_counted_and_leave_the_state_finite(tmp_path, synthetic_splits, monkeypatch,
                                                                          caplog):
  poison_objective(monkeypatch, 0.25)
  config = tiny_config(num_steps=20, log_every=10, eval_every=10, skip_nonfinite_steps=0.5)
  workdir = str(tmp_path / 'run')
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, workdir)
  history = json.loads(open(os.path.join(workdir, 'history.json')).read())
  counts = [h['skipped_steps'] for h in history]
  assert 0 < counts[0] <= counts[1] < 20, counts
  assert f'step 20/20  loss' in caplog.text and f'skipped {counts[1]} non-finite steps so far' in caplog.text
  params = checkpoints.Manager(workdir, METRIC).restore_params(20)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_too_many_skipped_steps_still_stop_the_run(tmp_path, synthetic_splits, monkeypatch):
  poison_objective(monkeypatch, 1.0)
  config = tiny_config(num_steps=20, log_every=10, eval_every=10, skip_nonfinite_steps=0.5)
  with pytest.raises(UserError, match=r'training diverged: 10 of the 10 steps up to step 10 had a non-finite loss '
                     r'or gradient, more than train.skip_nonfinite_steps=0.5 of them; no checkpoint'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_scoring_tools_refuse_non_finite_parameters(tmp_path):
  config, state = make_state(scale=np.nan)
  files.write_text(str(tmp_path / 'config.json'), config.to_json_best_effort())
  manager = checkpoints.Manager(str(tmp_path), config.train.best_metric, training=True)
  manager.save(3, state, {}, [])
  manager.close()
  with pytest.raises(UserError, match='checkpoint at step 3 .* holds non-finite parameters'):
    inference.load_trained(str(tmp_path))


def test_unreadable_checkpoint_is_one_error_for_the_scoring_tools(tmp_path):
  config, state = make_state()
  files.write_text(str(tmp_path / 'config.json'), config.to_json_best_effort())
  manager = checkpoints.Manager(str(tmp_path), config.train.best_metric, training=True)
  manager.save(3, state, {}, [])
  manager.close()
  os.remove(tmp_path / 'checkpoints' / '3' / 'state' / '_METADATA')
  with pytest.raises(UserError, match=r'cannot read the checkpoint at step 3 in \S+ \(\w+'):
    inference.load_trained(str(tmp_path))


def test_workdir_that_is_a_file_is_refused_before_training(tmp_path, synthetic_splits):
  workdir = tmp_path / 'file'
  workdir.write_text('')
  with pytest.raises(UserError, match='is a file, not a folder'):
    train.train_and_evaluate(tiny_config(), str(workdir))
  with pytest.raises(UserError, match='cannot create --workdir=.*/file/run: .*/file is a file'):
    train.train_and_evaluate(tiny_config(), str(workdir / 'run'))


def test_read_only_workdir_is_refused_before_training(tmp_path, synthetic_splits, monkeypatch):
  # Permission bits do not stop root, so a read-only mount is simulated where the probe writes.
  def read_only(dir=None, **kwargs):  # pylint: disable=redefined-builtin
    raise OSError(errno.EROFS, 'Read-only file system')
  monkeypatch.setattr(tempfile, 'TemporaryFile', read_only)
  with pytest.raises(UserError, match=r'cannot write in .* \(for --workdir=.*/run\): Read-only file system'):
    train.train_and_evaluate(tiny_config(), str(tmp_path / 'run'))
  assert os.listdir(tmp_path) == []


def test_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  path = tmp_path / 'history.json'
  files.write_text(path, '[1]')
  with pytest.raises(OSError), files.replacing(path) as tmp, open(tmp, 'w') as f:
    f.write('[1, 2')
    raise OSError(errno.ENOSPC, 'No space left on device')
  assert path.read_text() == '[1]' and os.listdir(tmp_path) == ['history.json']

  picture = tmp_path / 'learning_curve.png'
  history = [{'step': 10, 'train_accuracy': 0.5, METRIC: 0.5}, {'step': 20, 'train_accuracy': 0.7, METRIC: 0.6}]
  plots.learning_curve(picture, history)
  before = picture.read_bytes()

  def full_disk(self, fname, **kwargs):
    with open(fname, 'wb') as f:
      f.write(b'\x89PNG')
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(plots.Figure, 'savefig', full_disk)
  with pytest.raises(OSError):
    plots.learning_curve(picture, history[:1])
  assert picture.read_bytes() == before and sorted(os.listdir(tmp_path)) == ['history.json', 'learning_curve.png']


def test_exclusive_serialises_holders_and_runs_unlocked_where_no_lock_can_be_made(tmp_path, monkeypatch):
  lock, events = tmp_path / 'data' / '.prepare.lock', []
  entered = threading.Event()

  def hold():
    with files.exclusive(lock):
      entered.set()
      time.sleep(0.3)
      events.append('first leaves')

  holder = threading.Thread(target=hold)
  holder.start()
  entered.wait()
  with files.exclusive(lock):
    events.append('second enters')
  holder.join()
  assert events == ['first leaves', 'second enters']
  assert not lock.exists()  # Nothing left behind.

  (tmp_path / 'a_file').write_text('')
  with files.exclusive(tmp_path / 'a_file' / '.prepare.lock'):  # No folder can be made under a file.
    events.append('unlocked')
  assert events[-1] == 'unlocked'

  def no_locks(*_):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(files.fcntl, 'flock', no_locks)
  with files.exclusive(lock):
    events.append('no locks')
  assert events[-1] == 'no locks' and not lock.exists()


def test_checkpoint_cadence(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(checkpoints.time, 'monotonic', lambda: clock[0])
  every = config_schema.base_config().train.checkpoint_every
  assert (every.steps, every.minutes) == (0, 10.0)  # at most ten minutes of work at risk by default
  cadence = checkpoints.Cadence(every, steps_per_call=1)
  clock[0] = 599.0
  assert not cadence.due(7, log_step=False)
  clock[0] = 600.0
  assert cadence.due(8, log_step=False)
  cadence.saved()
  assert not cadence.due(9, log_step=False)
  every.update(steps=50, minutes=0)
  cadence = checkpoints.Cadence(every, steps_per_call=4)
  clock[0] = 1e6
  assert [s for s in range(4, 201, 4) if cadence.due(s, log_step=True)] == [52, 100, 152, 200]

  config = tiny_config()
  config.train.checkpoint_every.minutes = -1
  with pytest.raises(UserError, match='checkpoint_every'):
    config_schema.validate(config)


def test_stop_notice_catches_sigterm_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopNotice() as notice:
    assert not notice.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert notice.requested(2) and notice.signal_name == 'SIGTERM'
  assert signal.getsignal(signal.SIGTERM) is before


def test_compare_says_what_is_done_to_an_image_of_another_shape():
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from siamese_jax.datasets import image_files  # pylint: disable=g-import-not-at-top
  mnist = image_files.InputForm(size=28, channels=1, invert=False)
  assert image_files.conversion_note(Image.new('RGB', (300, 200)), mnist) == (
      '300x200 RGB: converted to grayscale, stretched to 28x28 (aspect ratio not kept)')
  assert image_files.conversion_note(Image.new('L', (28, 28)), mnist) is None
  assert image_files.conversion_note(Image.new('LA', (56, 56)), image_files.InputForm(size=28, channels=3, invert=True)) == (
      '56x56 LA: transparent background filled with white, grayscale copied to the 3 colour channels, resized '
      'to 28x28')


@pytest.fixture
def small_disk(tmp_path):
  """A 600 kB tmpfs (room for two of the tiny task's checkpoints), or a skip where mounting is not allowed."""
  folder = tmp_path / 'disk'
  folder.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(folder)], capture_output=True).returncode:
    pytest.skip('cannot mount a small tmpfs here (needs root)')
  yield folder
  subprocess.run(['umount', str(folder)], check=True)


def test_full_disk_is_one_error_and_leaves_whole_files(small_disk, synthetic_splits):
  config = tiny_config(num_steps=40, log_every=5, eval_every=5)
  workdir = str(small_disk / 'run')
  with pytest.raises(UserError, match=r'(cannot save a checkpoint in \S+ \(.*No space left on device.*\); the '
                     r'newest complete checkpoint: step \d+)|(cannot write \S+: No space left on device)'):
    train.train_and_evaluate(config, workdir)
  history = json.loads(open(os.path.join(workdir, 'history.json')).read())
  assert history and not glob.glob(os.path.join(workdir, '.*.tmp'))
  # The rerun (with room again) removes the unfinished checkpoint's temporary folder and carries on.
  subprocess.run(['mount', '-o', 'remount,size=4m', str(small_disk)], check=True)
  train.train_and_evaluate(config, workdir)
  assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))
  assert checkpoints.Manager(workdir, METRIC).steps()[-1] == 40
