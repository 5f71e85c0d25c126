"""Evaluators: small pluggable modules, each built from one block of `config.evaluators`.

An evaluator is constructed once from its config block and the loaded splits, then called with a
`Scorer` (the current network) and returns a flat dict of metrics. `run_all` prefixes each metric
with the evaluator's name, e.g. 'oneshot_20way/accuracy'.
"""

from __future__ import annotations

import importlib

from siamese_jax.errors import UserError

KINDS = ('oneshot', 'verification', 'retrieval', 'reference')


def build(name: str, evaluator_config, splits):
  kind = evaluator_config.get('kind')
  if kind not in KINDS:
    raise UserError(f'evaluators.{name}.kind={kind!r}; choose one of {", ".join(KINDS)}')
  split = evaluator_config.get('split', 'validation')
  if split not in splits:
    raise UserError(f'evaluators.{name}.split={split!r} is not a split of this dataset '
                    f'({", ".join(sorted(splits))})')
  module = importlib.import_module(f'siamese_jax.evaluators.{kind}')
  return module.Evaluator(evaluator_config, splits)


def build_all(evaluators_config, splits) -> dict:
  return {name: build(name, block, splits) for name, block in evaluators_config.items()}


def run_all(evaluators: dict, scorer) -> dict[str, float]:
  metrics = {}
  for name, evaluator in evaluators.items():
    for key, value in evaluator(scorer).items():
      metrics[f'{name}/{key}'] = value
  return metrics
