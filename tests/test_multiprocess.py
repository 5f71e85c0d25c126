"""Multi-process training: two CPU processes joined by `jax.distributed` train like one process.

Each worker (multiprocess_worker.py) sees 2 local of 4 global devices; the reference runs here on this
process's 2 devices over the same global batches. For both input paths, parameters, losses and
evaluations must agree, the 2-process checkpoint must restore in this single process, and only process 0
may write logs and plots.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import chex
import jax
import multiprocess_worker as worker
import pytest

from siamese_jax import checkpoints, datasets, models, train

NUM_PROCESSES = 2
TIMEOUT_S = 300
REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_workers(workdir: pathlib.Path) -> list[tuple[subprocess.Popen, pathlib.Path]]:
  """The worker processes, started on 2 CPU devices each, with their log files."""
  # gloo carries the cross-process collectives on CPU (jax's default; named so a change shows here).
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
  port = free_port()
  workdir.mkdir()
  workers = []
  for i in range(NUM_PROCESSES):
    log = workdir / f'worker{i}.log'
    with open(log, 'w') as out:
      proc = subprocess.Popen([sys.executable, worker.__file__, f'--coordinator_address=localhost:{port}',
                               f'--num_processes={NUM_PROCESSES}', f'--process_id={i}', f'--workdir={workdir}'],
                              env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    workers.append((proc, log))
  return workers


def wait_for(workers) -> None:
  """Waits for every worker; fails with their logs if one fails or they run past TIMEOUT_S."""
  procs = [proc for proc, _ in workers]
  deadline = time.monotonic() + TIMEOUT_S
  # A failed worker leaves the other blocked in a collective: stop at the first failure.
  while (any(p.poll() is None for p in procs) and not any(p.returncode for p in procs)
         and time.monotonic() < deadline):
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert not any(p.returncode for p in procs), '\n'.join(
      f'--- worker {i} exited with {p.returncode}; log tail:\n{log.read_text()[-6000:]}'
      for i, (p, log) in enumerate(workers))


def restore(workdir, config):
  """The final training state and history in `workdir`, restored in this (single) process."""
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  template = train.init_state(config, model, tx, worker.splits()['train'].image_shape, jax.random.key(1))
  manager = checkpoints.Manager(str(workdir), config.train.best_metric)
  try:
    return manager.restore(template, worker.NUM_STEPS)
  finally:
    manager.close()


def untimed(entry: dict) -> dict:
  """A history entry without its training time, which differs between processes."""
  return {k: v for k, v in entry.items() if k != 'elapsed_s'}


@pytest.mark.slow  # three processes compile and train twice each: ~85 s of CPU time
def test_two_processes_train_like_one(tmp_path, monkeypatch):
  assert jax.process_count() == 1 and jax.device_count() == 2
  start = time.perf_counter()
  workers = start_workers(tmp_path / 'two_processes')
  try:  # The single-process reference runs while the workers do.
    monkeypatch.setattr(datasets, 'load_splits', lambda data_config: worker.splits())
    single_best = {name: train.train_and_evaluate(worker.config(resident), str(tmp_path / 'one_process' / name))
                   for name, resident in worker.INPUT_PATHS.items()}
  finally:
    wait_for(workers)
  print(f'{NUM_PROCESSES} worker processes and the reference: {time.perf_counter() - start:.1f} s')

  for name, resident in worker.INPUT_PATHS.items():
    multi_dir = tmp_path / 'two_processes' / name
    config = worker.config(resident)
    multi_state, multi_history = restore(multi_dir, config)
    single_state, single_history = restore(tmp_path / 'one_process' / name, config)
    assert int(multi_state.step) == worker.NUM_STEPS, name
    chex.assert_trees_all_close(multi_state.params, single_state.params, atol=5e-5)  # as in test_train
    assert [h['step'] for h in multi_history] == [2, 4], name
    chex.assert_trees_all_close(list(map(untimed, multi_history)), list(map(untimed, single_history)),
                                rtol=1e-5)  # losses and evaluations

    # Every process computed the same evaluation (embeddings are gathered from all of them).
    bests = [untimed(json.loads((multi_dir / f'best.{i}.json').read_text())) for i in range(NUM_PROCESSES)]
    assert bests[0] == bests[1], name
    chex.assert_trees_all_close(bests[0], untimed(single_best[name]), rtol=1e-5)

    # Logs and plots are written by process 0 alone.
    assert len(os.listdir(multi_dir / 'tensorboard')) == 1, name
    assert json.loads((multi_dir / 'history.json').read_text()) == multi_history, name
    assert (multi_dir / 'learning_curve.png').exists() and (multi_dir / 'config.json').exists(), name
