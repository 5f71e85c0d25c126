"""The one exception type that the command line turns into a single clear line."""


class UserError(Exception):
  """A problem the user can fix: a bad config value, a missing path, an unreadable file.

  Raised before anything is written, with a message that says what to change. `main` prints it
  as one line and exits non-zero instead of showing a traceback.
  """
