"""Scores a trained workdir with any evaluator blocks: its config's, or ones given here (Lake runs included).

    python -m siamese_jax.evaluate --workdir=DIR --lake_runs=all_runs.zip
    python -m siamese_jax.evaluate --workdir=DIR --blocks=test_evaluators
    python -m siamese_jax.evaluate --workdir=DIR --evaluator=kind=oneshot,split=validation,ways=5,shots=1

Uses the checkpoint that training kept as best (or `--checkpoint=latest` or a step). `--blocks` names the
run config's evaluator sections or blocks in them ('evaluators', 'test_evaluators.heldout'); `--evaluator`
gives a block as comma-separated key=value pairs (values are Python literals, else strings);
`--lake_runs=P` is short for `--evaluator=kind=lake_runs,path=P`. Prints each metric and writes them to
DIR/evaluation.json.
"""

from __future__ import annotations

import ast
import json
import os

from absl import app, flags

from siamese_jax import cli, files, inference
from siamese_jax.errors import UserError

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A training workdir (holding config.json and checkpoints/).', flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step.', flag_values=FLAGS)
flags.DEFINE_list('blocks', [], "The run config's evaluator blocks to score: 'evaluators', 'test_evaluators', "
                  "or one block of them, e.g. 'test_evaluators.heldout'.", flag_values=FLAGS)
flags.DEFINE_multi_string('evaluator', [], 'An evaluator block, e.g. kind=lake_runs,path=all_runs.zip.',
                          flag_values=FLAGS)
flags.DEFINE_string('lake_runs', None, 'Folder of runNN/ folders, or all_runs.zip, scored as a lake_runs block.',
                    flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the blocks given here that set none (for breaking ties).', flag_values=FLAGS)
flags.mark_flag_as_required('workdir', flag_values=FLAGS)

SECTIONS = ('evaluators', 'test_evaluators')


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_block(text: str) -> dict:
  """'kind=oneshot,ways=5' -> {'kind': 'oneshot', 'ways': 5, 'seed': --seed}."""
  pairs = [item.split('=', 1) for item in text.split(',') if item.strip()]
  if any(len(pair) != 2 for pair in pairs):
    raise UserError(f'--evaluator={text}: give key=value pairs separated by commas')
  block = {'seed': FLAGS.seed} | {key.strip(): _literal(value.strip()) for key, value in pairs}
  if 'kind' not in block:
    raise UserError(f'--evaluator={text}: give its kind, e.g. kind=oneshot')
  return block


def config_blocks(config, names: list[str]) -> dict:
  """The blocks of the run's config that `--blocks` names."""
  blocks = {}
  for name in names:
    section, _, block = name.partition('.')
    if section not in SECTIONS or (block and block not in config[section]):
      known = [f'{s}.{b}' for s in SECTIONS for b in config[s]]
      raise UserError(f'--blocks={name} is not in the run\'s config; choose from {", ".join(SECTIONS + tuple(known))}')
    blocks.update({b: config[section][b] for b in ([block] if block else config[section])})
  return blocks


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    given = [parse_block(text) for text in FLAGS.evaluator]
    if FLAGS.lake_runs:
      given.append(parse_block(f'kind=lake_runs,path={FLAGS.lake_runs}'))
    if not given and not FLAGS.blocks:
      raise UserError('give what to score: --lake_runs, --evaluator or --blocks')
    config, step, scorer = inference.load_trained(FLAGS.workdir, cli.checkpoint_choice(FLAGS.checkpoint))
    blocks = config_blocks(config, FLAGS.blocks)
    for number, block in enumerate(given, 1):
      blocks[block['kind'] if block['kind'] not in blocks else f'{block["kind"]}_{number}'] = block
    metrics = inference.evaluate(config, scorer, blocks)
    print(f'{FLAGS.workdir}: checkpoint at step {step} ({FLAGS.checkpoint})')
    for key, value in metrics.items():
      print(f'{key}  {value:.4f}')
    path = os.path.join(FLAGS.workdir, 'evaluation.json')
    files.write_text(path, json.dumps({'step': step, 'metrics': metrics}, indent=1))
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, FLAGS))
