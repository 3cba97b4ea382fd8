"""The exceptions refinery raises for problems a user can fix; the CLI prints them without a traceback."""


class RefineryError(Exception):
    """Base of every error caused by user input or project state rather than a bug."""

    exit_code = 1


class ConfigError(RefineryError):
    """The project file is missing, malformed, or holds an unknown key or a bad value."""


class DataError(RefineryError):
    """An input data file cannot be read or one of its rows is invalid."""


class StoreError(RefineryError):
    """The DuckDB store cannot be opened or is in an unexpected state."""


class Interrupted(RefineryError):
    """Ctrl-C stopped a command; what was interrupted and what happens next. Exit code 130, as a shell expects."""

    exit_code = 130
