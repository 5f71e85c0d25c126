"""The command-line modules only parse flags and call the library: none imports another, even indirectly."""

import ast
import gc
import pathlib

import pytest
from conftest import REPO

PACKAGE = REPO / 'siamese_jax'
TOOLS = ('evaluate', 'compare', 'show_pairs', 'index', 'main')


def parse(path: pathlib.Path) -> ast.Module:
  """The file's syntax tree, parsed with the garbage collector paused: on Python 3.11.7 and earlier a
  collection during the parse can release the GIL to another thread that parses too, and the parse then
  fails with "AST constructor recursion depth mismatch" (python/cpython#106905, fixed in 3.11.8)."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    return ast.parse(path.read_text())
  finally:
    if enabled:
      gc.enable()


def imported_modules(path: pathlib.Path) -> set[str]:
  """The siamese_jax modules a file imports, as dotted names without the package prefix."""
  found = set()
  for node in ast.walk(parse(path)):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('siamese_jax'):
      base = node.module.removeprefix('siamese_jax').lstrip('.')
      found.update(f'{base}.{alias.name}'.lstrip('.') for alias in node.names)
      found.add(base)
    elif isinstance(node, ast.Import):
      found.update(a.name.removeprefix('siamese_jax.') for a in node.names if a.name.startswith('siamese_jax.'))
  return {name for name in found if name}


def module_file(name: str) -> pathlib.Path | None:
  path = PACKAGE.joinpath(*name.split('.'))
  for candidate in (path.with_suffix('.py'), path / '__init__.py'):
    if candidate.is_file():
      return candidate
  return None  # a function or class imported from a module


def reachable(tool: str) -> set[str]:
  seen, todo = set(), [tool]
  while todo:
    name = todo.pop()
    path = module_file(name)
    if name in seen or path is None:
      continue
    seen.add(name)
    todo.extend(imported_modules(path))
  return seen - {tool}


@pytest.mark.parametrize('tool', TOOLS)
def test_a_tool_imports_no_other_tool(tool):
  assert not reachable(tool) & set(TOOLS), f'siamese_jax.{tool} imports {sorted(reachable(tool) & set(TOOLS))}'
