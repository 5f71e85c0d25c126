"""Files written whole or not at all: a full disk or a kill mid-write leaves the previous version in place."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import Iterator

from siamese_jax.errors import UserError


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
  """A temporary path beside `path` to write to; moved onto `path` (os.replace: atomic) if the block succeeds."""
  path = os.fspath(path)
  # Named, not created: the writer creates it, with the permissions the umask gives any new file.
  tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp')
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
  """Holds an exclusive lock on the file `path` for the block, waiting while another process holds it.

  So that processes sharing a folder (two runs, or the hosts of one job) do a one-off write once: the
  first does it, the others wait and then find it done. The lock file is removed on leaving, so nothing
  stays behind. Where it cannot be made (a read-only folder, a remote path) or the file system has no
  locks (ENOLCK on some network mounts), the block runs unlocked.
  """
  lock = _lock(os.fspath(path))
  try:
    yield
  finally:
    if lock:
      with contextlib.suppress(OSError):
        os.remove(lock.name)  # Before unlocking: a process waiting on this file then finds it gone.
      lock.close()


def _lock(path: str):
  """The open lock file at `path`, locked by this process; None where no lock can be had."""
  if '://' in path:
    return None
  while True:
    try:
      os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
      lock = open(path, 'a')  # pylint: disable=consider-using-with
    except OSError:
      return None
    try:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
        return lock  # Still the file at `path`, not one a previous holder removed while this process waited.
    except FileNotFoundError:
      pass
    except OSError:
      lock.close()
      with contextlib.suppress(OSError):
        os.remove(path)
      return None
    lock.close()


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` whole; a failure (a full disk) is a UserError and leaves the previous file."""
  try:
    with replacing(path) as tmp, open(tmp, 'w') as f:
      f.write(text)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror or e}') from None


def check_writable_folder(path: str) -> None:
  """Raises UserError unless `path` is, or can be made, a folder this process can write files in.

  Probed by creating (and removing) a file, since permission bits say nothing of a read-only mount or
  of a process running as root. Writes nothing lasting; remote paths (gs://) are left to their client.
  """
  if '://' in path:
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'--workdir={path} is a file, not a folder')
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(os.path.abspath(probe))
  if not os.path.isdir(probe):
    raise UserError(f'cannot create --workdir={path}: {probe} is a file, not a folder')
  try:
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise UserError(f'cannot write in {probe} (for --workdir={path}): {e.strerror or e}') from None
