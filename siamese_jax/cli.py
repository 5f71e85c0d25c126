"""What every command line shares: flag parsing and user errors reported as one `error: ...` line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from absl import flags

from siamese_jax.errors import UserError


def parse_flags(argv: list[str], tool_flags: flags.FlagValues | None = None) -> list[str]:
  """absl's parser, with a missing config file, a bad flag or a bad config override reported in one line.

  Args:
    argv: the full command line, program name first.
    tool_flags: a tool's own flags, kept off absl's global registry so that tools sharing flag names
      (--workdir, --seed) can be imported into one process; they are parsed first and the rest of the
      command line (--help, logging flags) goes to the global flags.

  Returns:
    The arguments left after the flags, program name first (what `app.run` hands to `main`).
  """
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        sys.exit(f'error: config file {path} not found')
  try:
    if tool_flags is not None:
      argv = tool_flags(argv, known_only=True)
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raised: its traceback is inside the message; its last line says what went wrong.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: {lines[-1] if "Traceback" in str(e) else lines[0]}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(f'error: bad --config override: {e}')


def checkpoint_choice(value: str) -> str | int:
  """--checkpoint's value: 'best', 'latest' or a step number."""
  if value.isdigit():
    return int(value)
  if value not in ('best', 'latest'):
    raise UserError(f'--checkpoint={value}; give best, latest or a step')
  return value


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns a `UserError` into `error: <message>` on stderr and exit status 1, without a traceback."""
  try:
    yield
  except UserError as e:
    sys.exit(f'error: {e}')
