"""Notice of an impending stop, so that training saves at the next step boundary and exits cleanly.

Cloud TPU VMs, SLURM and Kubernetes send SIGTERM some seconds before killing a job. One process catches
it itself; several processes instead ask JAX's preemption service (started by `jax.distributed`), which
makes every process see the notice at the same step, so that they all save that step together.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopNotice:
  """`requested(step)`: whether to save and stop at `step`. Use as a context manager (restores the handler)."""

  def __init__(self):
    self.signal_name = None
    self._previous = None

  def __enter__(self) -> StopNotice:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signal_name is not None
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
      return False
    if reached:
      self.signal_name = 'a preemption notice'
    return reached
