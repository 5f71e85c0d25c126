"""Evaluators: small pluggable modules, each built from one block of `config.evaluators`.

An evaluator is constructed once from its config block and the loaded splits, then called with a
`Scorer` (the current network) and returns a flat dict of metrics. `run_all` prefixes each metric
with the evaluator's name, e.g. 'oneshot_20way/accuracy'.
"""

from __future__ import annotations

import importlib

from siamese_jax.errors import UserError

KINDS = ('oneshot', 'lake_runs', 'verification', 'retrieval', 'reference')


def get_split(splits: dict, name: str, key: str):
  """splits[name], or a UserError naming the config key and the splits there are."""
  if name not in splits:
    raise UserError(f'{key}={name!r} is not a split of this dataset ({", ".join(sorted(splits))})')
  return splits[name]


def build(name: str, evaluator_config, splits):
  kind = evaluator_config.get('kind')
  if kind not in KINDS:
    raise UserError(f'evaluators.{name}.kind={kind!r}; choose one of {", ".join(KINDS)}')
  if not evaluator_config.get('path'):
    get_split(splits, evaluator_config.get('split', 'validation'), f'evaluators.{name}.split')
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
