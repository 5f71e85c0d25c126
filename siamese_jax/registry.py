"""How every pluggable kind (dataset, encoder, head, loss, evaluator) is found and configured.

A kind is a table from name to entry; `lookup` is the only way in, so an unknown name is one error that
lists the known ones. An entry given as 'module' or 'module:attribute' is imported on first use, which
keeps heavy modules (TFDS datasets) out of processes that never use them and lets a package's registry
name its own submodules without an import cycle. An entry's config keys are its keyword arguments
(`keywords`), so `check_keys` can reject a misspelt key from the signature alone, before any data is read.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from siamese_jax.errors import UserError


def lookup(table: Mapping[str, Any], name, key: str) -> Any:
  """table[name], imported if given by module path; else a UserError naming the config key and the known names."""
  if not isinstance(name, str) or name not in table:
    raise UserError(f'{key}={name!r} is unknown; choose one of {", ".join(table)}')
  entry = table[name]
  if isinstance(entry, str):
    module, _, attribute = entry.partition(':')
    entry = importlib.import_module(module)
    return getattr(entry, attribute) if attribute else entry
  return entry


def keywords(entry) -> tuple[str, ...]:
  """The arguments `entry` (a function or class) takes by keyword only or with a default: its config keys."""
  return tuple(name for name, parameter in inspect.signature(entry).parameters.items()
               if parameter.kind == parameter.KEYWORD_ONLY or (
                   parameter.kind == parameter.POSITIONAL_OR_KEYWORD and parameter.default is not parameter.empty))


def check_keys(block, known: Iterable[str], where: str) -> None:
  """One UserError naming the block, its unknown keys and the known ones, if it has any unknown key."""
  known = sorted(set(known))
  unknown = [key for key in block.keys() if key not in known]
  if unknown:
    listed = ', '.join(repr(key) for key in unknown)
    raise UserError(f'{where}: unknown key{"s" if len(unknown) > 1 else ""} {listed} (known: {", ".join(known)})')
