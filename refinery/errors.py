"""The exceptions refinery raises for problems a user can fix; the CLI prints them without a traceback."""

from __future__ import annotations

import errno


class RefineryError(Exception):
    """Base of every error caused by user input or project state rather than a bug."""

    exit_code = 1


class ConfigError(RefineryError):
    """The project file is missing, malformed, or holds an unknown key or a bad value."""


class DataError(RefineryError):
    """An input data file cannot be read or one of its rows is invalid."""


class StoreError(RefineryError):
    """The DuckDB store cannot be opened or is in an unexpected state."""


class JudgeError(RefineryError):
    """The judge gave no answers: its endpoint cannot be reached, refused the request, or answered in another shape."""


class Interrupted(RefineryError):
    """Ctrl-C stopped a command; what was interrupted and what happens next. Exit code 130, as a shell expects."""

    exit_code = 130


_FIXES = {
    errno.ENAMETOOLONG: "a name in the path is too long for the file system (255 bytes a folder or file name at "
                        "most); give a shorter path",
    errno.EACCES: "permission denied; check the permissions, or give another path",
    errno.EPERM: "not permitted; check the permissions, or give another path",
    errno.EROFS: "the file system is read-only; give a path on a writable one",
    errno.ENOSPC: "no space left on the device; free some space and run it again",
    errno.EIO: "an input/output error on the device; check the disk and run it again",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.ELOOP: "the path has too many levels of symbolic links; check the links",
}


def describe_os_error(exc: OSError) -> str | None:
    """An error the file system gave for a path a person chose, in words with the fix; None for any other
    OSError, which is a bug to show with its traceback."""
    if exc.filename is None or exc.errno not in _FIXES:
        return None
    name = exc.filename if isinstance(exc.filename, str) else repr(exc.filename)
    return f"{shown_text(name)}: {_FIXES[exc.errno]}."


def shown_text(text: str, limit: int = 120) -> str:
    """Text a person gave, safe to print: undecodable bytes as \\xNN, and a long value cut in the middle."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
        if any("\udc80" <= ch <= "\udcff" for ch in text) else text
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"
