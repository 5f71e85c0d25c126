"""Evaluators: small pluggable modules, each built from one block of `config.evaluators`.

An evaluator is constructed once from the loaded splits and its config block, then called with a
`Scorer` (the current network) and returns a flat dict of metrics. `run_all` prefixes each metric
with the evaluator's name, e.g. 'oneshot_20way/accuracy'.

A block's `kind` picks the module's `Evaluator` class from `KINDS`; the block's other keys are the
class's keyword arguments, so a misspelt key is an error that `config_schema.validate` raises from the
signature, before any data is read. A new evaluator is one module here plus its entry in `KINDS`.
"""

from __future__ import annotations

from siamese_jax import registry
from siamese_jax.errors import UserError

KINDS = {kind: f'siamese_jax.evaluators.{kind}:Evaluator'
         for kind in ('oneshot', 'lake_runs', 'verification', 'retrieval', 'reference')}


def get_split(splits: dict, name: str, key: str):
  """splits[name], or a UserError naming the config key and the splits there are."""
  if name not in splits:
    raise UserError(f'{key}={name!r} is not a split of this dataset ({", ".join(sorted(splits))})')
  return splits[name]


def resolve(where: str, evaluator_config):
  """The Evaluator class a block's `kind` names and the block's other keys, checked against its signature.

  `where` names the block in errors, e.g. 'test_evaluators.lake_runs'.
  """
  if not hasattr(evaluator_config, 'keys'):
    raise UserError(f'{where} must be a block of settings with a kind, got {evaluator_config!r}')
  settings = {key: evaluator_config[key] for key in evaluator_config.keys() if key != 'kind'}
  evaluator = registry.lookup(KINDS, evaluator_config.get('kind'), f'{where}.kind')
  registry.check_keys(settings, registry.keywords(evaluator), where)
  return evaluator, settings


def build(name: str, evaluator_config, splits, block: str = 'evaluators'):
  """The evaluator of config block `block`.`name`; errors name that block."""
  evaluator, settings = resolve(f'{block}.{name}', evaluator_config)
  try:
    return evaluator(splits, **settings)
  except UserError as error:
    raise UserError(f'{block}.{name}: {error}') from None


def build_all(evaluators_config, splits, block: str = 'evaluators') -> dict:
  return {name: build(name, settings, splits, block) for name, settings in evaluators_config.items()}


def run_all(evaluators: dict, scorer) -> dict[str, float]:
  metrics = {}
  for name, evaluator in evaluators.items():
    for key, value in evaluator(scorer).items():
      metrics[f'{name}/{key}'] = value
  return metrics
