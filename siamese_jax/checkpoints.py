"""Orbax checkpoints: the latest state (for resuming) and the best-validation state (for using).

Each checkpoint holds the training state and the metric history up to it, and records its validation
metrics on disk so that Orbax's `BestN` policy ranks checkpoints restored from disk too: the kept best
is the run's best across any number of resumes. Checkpoints saved between validations (on a cadence,
on preemption) record no metrics and are kept only while they are the latest.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from siamese_jax.errors import UserError

_SUBDIR = 'checkpoints'
# Where checkpoints that cannot be read are moved: kept for inspection, out of the way of new saves.
UNREADABLE_SUBDIR = 'checkpoints_unreadable'


def _directory(workdir: str) -> epath.Path:
  return epath.Path(workdir) / _SUBDIR


def _handlers():
  # The PyTree handler (the Standard one's base) for the state: it can read a part of it (restore_params).
  return {'state': ocp.PyTreeCheckpointHandler(), 'history': ocp.JsonCheckpointHandler()}


def _restore_args(abstract_tree, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restores `abstract_tree` (ShapeDtypeStructs) as shaped and sharded there; `partial`: a subtree of the saved."""
  return ocp.args.PyTreeRestore(item=abstract_tree, partial_restore=partial,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(flax.serialization.to_state_dict(tree))[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat if hasattr(leaf, 'shape')}


def check_compatible(workdir: str, abstract_state) -> None:
  """Raises UserError if `workdir` holds a checkpoint of another model or training state. Writes nothing.

  A training state differs when, e.g., a run kept without a moving average resumes with `train.ema_decay`.
  The newest checkpoint whose metadata reads is compared; unreadable ones are reported when resuming.
  """
  directory = _directory(workdir)
  if not directory.exists():
    return
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers=_handlers()) as manager:
    saved = None
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        saved = manager.item_metadata(step)['state'].tree
        break
      except Exception:  # pylint: disable=broad-except
        continue
  if saved is None:
    return
  saved_shapes = _shapes(saved)
  wanted = _shapes(abstract_state)
  if saved_shapes != wanted:
    diff = sorted(set(saved_shapes.items()) ^ set(wanted.items()))
    name = diff[0][0]
    raise UserError(f'{workdir} holds a checkpoint of another model or training state ({name}: saved '
                    f'{saved_shapes.get(name)}, config gives {wanted.get(name)}); use a new --workdir')


def _quiet_closed_loop_callbacks() -> None:
  """Drops the 'Event loop is closed' errors of reads still in flight when a failed restore gave up.

  Tensorstore reports each as a traceback long after the failure was handled; other errors still show.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(unraisable.exc_value)):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


class Manager:
  """Keeps the latest checkpoint and the one best in `best_metric` (higher is better), and says which is best.

  The one place that ranks checkpoints: Orbax's `BestN` policy, the training loop (improvement and early
  stopping), the end of training and the scoring tools all rank by `score`, the later of tied steps winning.

  `training`: the run's own manager, which creates the folder and removes the temporary folders that a
  killed save left; tools that only read (evaluate, compare) must not, as a save may be in flight.
  """

  def __init__(self, workdir: str, best_metric: str, training: bool = False):
    self.best_metric = best_metric
    self.directory = _directory(os.path.abspath(workdir))
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=self.score, n=1, keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes Orbax write each checkpoint's metrics beside it (without it they are dropped).
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=self.score, best_mode='max',
                                             create=training, cleanup_tmp_directories=training),
        item_handlers=_handlers())

  def score(self, metrics: dict) -> float:
    """What checkpoints are ranked by: `best_metric` in `metrics`, -inf where it is missing or not finite."""
    value = float(metrics.get(self.best_metric, -np.inf))
    return value if math.isfinite(value) else -np.inf

  def save(self, step: int, state, metrics: dict, history: list) -> None:
    """Saves asynchronously; `metrics` are the step's validation metrics, {} for a save between validations."""
    with self._write_errors():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(flax.serialization.to_state_dict(state)),
          history=ocp.args.JsonSave(history)), metrics={k: float(v) for k, v in metrics.items()})

  @contextlib.contextmanager
  def _write_errors(self):
    """A failed save (a full disk, lost permissions), here or in the background, as one UserError line."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      complete = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) if self.directory.exists() else []
      newest = f'step {complete[-1]}' if complete else 'none'
      reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise UserError(f'cannot save a checkpoint in {self.directory} ({type(e).__name__}: {reason}); '
                      f'the newest complete checkpoint: {newest}') from e

  def restore(self, state, step: int):
    """`state` (its shapes and shardings) restored from checkpoint `step`, and the history."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(abstract), history=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(state, restored['state']), list(restored['history'])

  def restore_latest(self, state):
    """The newest checkpoint that reads, else `state` unchanged and an empty history.

    A checkpoint that does not read (truncated by a full disk, files deleted) is reported in one line and
    moved to checkpoints_unreadable/ beside checkpoints/: never deleted, and out of the way of the step
    that training saves again.
    """
    for step in sorted(self.steps(), reverse=True):
      try:
        return self.restore(state, step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
    return state, []

  def _set_aside(self, step: int, error: Exception) -> None:
    _quiet_closed_loop_callbacks()
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    target = self.directory.parent / UNREADABLE_SUBDIR / f'{step}.{int(time.time())}'
    logging.warning('checkpoint %s is unreadable (%s: %s); moved to %s, resuming from the one before',
                    self.directory / str(step), type(error).__name__, reason[:200], target)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set aside unreadable checkpoint {step}')
    self._manager.reload()

  def restore_params(self, step: int):
    """The parameters to use from checkpoint `step`, shaped as saved (no template needed).

    The parameters are their moving average when the run kept one (train.ema_decay). Only that subtree
    is read: not the optimizer's moments, which are twice the parameters' size with Adam.
    """
    saved = self._manager.item_metadata(step)['state'].tree
    name = 'ema_params' if saved.get('ema_params') else 'params'
    on_one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {name: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_one_device),
                               saved[name])}
    return self._manager.restore(step, args=ocp.args.Composite(state=_restore_args(item, partial=True)))['state'][name]

  def history(self, step: int) -> list:
    """The metric history saved with checkpoint `step`, without reading any arrays."""
    return list(self._manager.restore(step, args=ocp.args.Composite(history=ocp.args.JsonRestore()))['history'])

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best(self, history: list) -> dict | None:
    """The entry of `history` whose checkpoint is kept as the best: among the kept steps, the highest score,
    the later of ties (as `BestN` keeps it); None when no kept step was validated."""
    kept = set(self.steps())
    scored = [h for h in history if h.get('step') in kept and self.best_metric in h]
    return max(reversed(scored), key=self.score) if scored else None

  def best_step(self) -> int | None:
    """The step of the best checkpoint by the latest one's history, else the latest; None when there is none."""
    steps = self.steps()
    if not steps:
      return None
    entry = self.best(self.history(max(steps)))
    return entry['step'] if entry else max(steps)

  def validations_since_best(self, history: list) -> int:
    """Validations in `history` since the score last improved (ties are no improvement): for early stopping."""
    scores = [self.score(h) for h in history if self.best_metric in h]
    return len(scores) - 1 - int(np.argmax(scores)) if scores else 0

  def wait(self) -> None:
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._write_errors():
      self._manager.close()


class Cadence:
  """When to save between validations: every `steps` steps and/or every `minutes` minutes (0: not by that).

  Steps count from 0, so a resumed run saves at the same steps; minutes count from the last save. With
  several processes the clock of process 0 decides, asked at log steps only (a collective), so that all
  save together.
  """

  def __init__(self, every, steps_per_call: int):
    self.steps = int(every.steps)
    self.minutes = float(every.minutes)
    self.steps_per_call = steps_per_call
    self._last = time.monotonic()

  def due(self, step: int, log_step: bool) -> bool:
    if self.steps and step % self.steps < self.steps_per_call:
      return True
    if not self.minutes:
      return False
    late = time.monotonic() - self._last >= self.minutes * 60
    if jax.process_count() == 1:
      return late
    return log_step and bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))

  def saved(self) -> None:
    self._last = time.monotonic()
