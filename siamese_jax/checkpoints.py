"""Orbax checkpoints: the latest state (for resuming) and the best-validation state (for using).

Each checkpoint holds the training state and the metric history up to it, and records its validation
metrics so that Orbax's `BestN` policy can keep the best one beside the latest.
"""

from __future__ import annotations

import os

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from siamese_jax.errors import UserError

_SUBDIR = 'checkpoints'


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
  """
  directory = _directory(workdir)
  if not directory.exists():
    return
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers=_handlers()) as manager:
    step = manager.latest_step()
    if step is None:
      return
    try:
      saved = manager.item_metadata(step)['state'].tree
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'cannot read the checkpoint at step {step} in {directory}: {e}') from e
  saved_shapes = _shapes(saved)
  wanted = _shapes(abstract_state)
  if saved_shapes != wanted:
    diff = sorted(set(saved_shapes.items()) ^ set(wanted.items()))
    name = diff[0][0]
    raise UserError(f'{workdir} holds a checkpoint of another model or training state ({name}: saved '
                    f'{saved_shapes.get(name)}, config gives {wanted.get(name)}); use a new --workdir')


class Manager:
  """Saves after each validation; keeps the latest checkpoint and the one best in `best_metric`."""

  def __init__(self, workdir: str, best_metric: str):
    self.best_metric = best_metric
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=self._score, n=1, keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        _directory(os.path.abspath(workdir)),
        options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True),
        item_handlers=_handlers())

  def _score(self, metrics) -> float:
    return float(metrics.get(self.best_metric, -np.inf))

  def save(self, step: int, state, metrics: dict, history: list) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(flax.serialization.to_state_dict(state)),
        history=ocp.args.JsonSave(history)), metrics={k: float(v) for k, v in metrics.items()})

  def restore(self, state, step: int):
    """`state` (its shapes and shardings) restored from checkpoint `step`, and the history."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(abstract), history=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(state, restored['state']), list(restored['history'])

  def restore_latest(self, state):
    """The latest checkpoint if there is one, else `state` unchanged and an empty history."""
    step = self._manager.latest_step()
    return (state, []) if step is None else self.restore(state, step)

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

  def best_metrics(self, history: list) -> dict | None:
    scored = [h for h in history if self.best_metric in h]
    # The last of tied entries, as Orbax's BestN keeps it.
    return max(reversed(scored), key=lambda h: h[self.best_metric]) if scored else None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
