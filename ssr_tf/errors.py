"""User-facing errors: one line, naming the key path, file, feature or record."""


class UserError(Exception):
  """Bad input from the user (config, data, request). The CLI prints it and exits 2."""


class ConfigError(UserError):
  """A config key is unknown, mistyped or out of range; the message names its path."""


class DataError(UserError):
  """A data file or record is missing, corrupt or inconsistent with the feature spec."""
