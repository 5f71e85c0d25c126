"""One process of a multi-process CPU training run, started (twice) by test_multiprocess.py.

  python tests/multiprocess_worker.py --coordinator_address=localhost:PORT --num_processes=2 \
      --process_id=I --workdir=DIR

joins the other process through `siamese_jax.distributed` and trains the tiny synthetic task of
test_train.py through each input path, in DIR/<path name>, writing what `train_and_evaluate` returned
to DIR/<path name>/best.I.json. Every process builds the same data from fixed seeds, as every host of a
real run reads the same files.
"""

import json
import os

import jax
from absl import app, flags
from conftest import synthetic_image_set
from test_train import tiny_config

from siamese_jax import datasets, distributed, train

NUM_STEPS = 4
INPUT_PATHS = {'device_resident': True, 'host_batches': False}  # name -> config.device_resident


def splits():
  return {'train': synthetic_image_set(seed=0), 'validation': synthetic_image_set(seed=1)}


def config(device_resident: bool):
  """Two validations and checkpoints; the device-resident path fuses two steps per call."""
  c = tiny_config(num_steps=NUM_STEPS, log_every=2, eval_every=2, steps_per_call=2 if device_resident else 1)
  c.device_resident = device_resident
  return c


def main(argv):
  del argv
  distributed.initialize()
  datasets.load_splits = lambda data_config: splits()
  for name, device_resident in INPUT_PATHS.items():
    workdir = os.path.join(flags.FLAGS.workdir, name)
    best = train.train_and_evaluate(config(device_resident), workdir)
    with open(os.path.join(workdir, f'best.{jax.process_index()}.json'), 'w') as f:
      json.dump(best, f)


if __name__ == '__main__':
  # Defined here, not on import, so that tests can import this module beside the CLI's own --workdir.
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.', required=True)
  app.run(main)
