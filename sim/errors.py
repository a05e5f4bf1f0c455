"""User-facing errors.

Every problem caused by the user's input (a shard, a YAML file, a flag) is raised as a
``UserError`` with one line naming the file or field, what was expected and what was found.
The CLI prints it and exits with code 2; it never shows a traceback for these.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: the CLI prints ``str(err)`` on one line and exits with code 2."""

    def __init__(self, message: str) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(one_line)


def one_line(err: BaseException, limit: int | None = None) -> str:
    """An exception's text on one line (its type when it has none), cut at ``limit`` chars:
    for quoting a library's error inside a UserError."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if limit is None else text[:limit]


def os_error_line(err: OSError) -> str:
    """``PATH: No space left on device (ENOSPC)``: an operating-system error in one line."""
    import errno

    name = errno.errorcode.get(err.errno or 0, "")
    reason = err.strerror or one_line(err)
    where = err.filename if err.filename is not None else "moesim"
    return f"{where}: {reason}{f' ({name})' if name else ''}"


def fail(where: object, expected: str, found: object) -> UserError:
    """Build the standard message ``WHERE: expected EXPECTED, got FOUND``."""
    return UserError(f"{where}: expected {expected}, got {found}")


class SelectionError(UserError):
    """A selection (positions, layers, ...) outside what the trace holds. ``field`` names the
    selection so a caller can say where the user wrote it (``trace.positions`` in a scenario)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = " ".join(str(detail).split())

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across worker processes
        return (type(self), (self.field, self.detail))
