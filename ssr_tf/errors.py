"""User-facing errors: one line, naming the key path, file, feature or record."""
import os


class UserError(Exception):
  """Bad input from the user (config, data, request). The CLI prints it and exits 2."""


class ConfigError(UserError):
  """A config key is unknown, mistyped or out of range; the message names its path."""


class DataError(UserError):
  """A data file or record is missing, corrupt or inconsistent with the feature spec."""


def output_file(path: str, flag: str = "--output") -> str:
  """Checks, before any work, that file `path` can be written: its folder is created when
  missing; a UserError names `flag` when that fails or the folder is not writable."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UserError(f"{flag} {path}: cannot create its folder ({e.strerror})") from None
  if os.path.isdir(path) or not os.access(folder, os.W_OK):
    raise UserError(f"{flag} {path}: not a writable file path")
  return path
