"""The one opener: every file moesim reads goes through here.

A path a user gives can be anything: missing, a directory, a FIFO (``open`` would block until
a writer appears), a device (``/dev/zero`` never ends), a symlink loop (``Path.resolve``
raises RuntimeError), a path through a regular file, or a file this process may not read.
Each of these becomes ONE line, ``PATH: expected WHAT, got KIND``, before any library sees
the path. Files are opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open
descriptor, so no kind of file can block the open, and what is checked is what is read.

Libraries that insist on a path (``torch.load(mmap=True)``) get one that `check_file` has
just seen to be a regular file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from sim.errors import UserError

StrPath = str | os.PathLike[str]


def kind_of_mode(mode: int) -> str:
    """What a stat mode says a path is, for ``expected ..., got KIND`` messages."""
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def describe_error(err: OSError) -> str:
    """An OS error as the KIND of a message: what the user finds at the path."""
    code = err.errno
    if code == errno.ENOENT:
        return "nothing (missing)"
    if code == errno.ELOOP:
        return "a symlink loop"
    if code == errno.ENOTDIR:
        return "a path through something that is not a directory"
    if code in (errno.EACCES, errno.EPERM):
        return "no permission to read it"
    if code == errno.ENAMETOOLONG:
        return "a name too long for the file system"
    return f"an unreadable path ({err.strerror or err}{_code(code)})"


def _code(code: int | None) -> str:
    return f", {errno.errorcode[code]}" if code in errno.errorcode else ""


def describe(path: StrPath) -> str:
    """What stands at ``path`` (symlinks followed): ``a file``, ``a directory``, ``a FIFO``,
    ``nothing (missing)``, ``a dangling symlink``, ``a symlink loop``, ..."""
    try:
        return kind_of_mode(os.stat(path).st_mode)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            return "a dangling symlink"
        return describe_error(err)
    except ValueError:  # an embedded NUL byte
        return "an invalid path (NUL byte)"


def check_file(path: StrPath, what: str = "a file") -> Path:
    """``path`` if it is a regular file (after symlinks); else a UserError naming what it is."""
    kind = describe(path)
    if kind != "a file":
        raise UserError(f"{path}: expected {what}, got {kind}")
    return Path(path)


def check_dir(path: StrPath, what: str = "a directory") -> Path:
    """``path`` if it is a directory (after symlinks); else a UserError naming what it is."""
    kind = describe(path)
    if kind != "a directory":
        raise UserError(f"{path}: expected {what}, got {kind}")
    return Path(path)


def is_file(path: StrPath) -> bool:
    """True for a regular file (after symlinks); never raises, never blocks."""
    return describe(path) == "a file"


def exists(path: StrPath) -> bool:
    """True when anything at all stands at ``path`` (a dangling symlink or a loop included):
    a results file that is there but unreadable must be an error, not skipped as absent."""
    return describe(path) != "nothing (missing)"


def is_dir(path: StrPath) -> bool:
    """True for a directory (after symlinks); never raises."""
    return describe(path) == "a directory"


def resolve(path: StrPath, what: str = "a path") -> Path:
    """``Path(path).resolve()`` with a symlink loop (RuntimeError in Python 3.11) or an OS
    error as a one-line UserError."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise UserError(f"{path}: expected {what}, got a symlink loop") from None
    except OSError as err:
        raise UserError(f"{path}: expected {what}, got {describe_error(err)}") from None


def open_file(path: StrPath, what: str = "a file") -> BinaryIO:
    """Open a regular file for reading in binary mode; anything else is a UserError.

    ``O_NONBLOCK`` makes opening a FIFO or a device return at once; ``fstat`` on the
    descriptor then refuses them (and directories) before a single byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        kind = describe(path) if err.errno == errno.ENOENT else describe_error(err)
        raise UserError(f"{path}: expected {what}, got {kind}") from None
    except ValueError:
        raise UserError(f"{path}: expected {what}, got an invalid path (NUL byte)") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{path}: expected {what}, got {kind_of_mode(mode)}")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_size(path: StrPath, what: str = "a file") -> int:
    """Size in bytes of a regular file (checked as `check_file` does)."""
    check_file(path, what)
    return os.stat(path).st_size


def read_bytes(path: StrPath, what: str = "a file", *, limit: int | None = None) -> bytes:
    """The whole file; with ``limit``, a file larger than ``limit`` bytes is refused before
    it is read (its size and the limit named)."""
    with open_file(path, what) as handle:
        if limit is not None:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise UserError(
                    f"{path}: expected {what} of at most {limit:,} bytes, got {size:,} bytes"
                )
        try:
            data = handle.read() if limit is None else handle.read(limit + 1)
        except OSError as err:
            raise UserError(f"{path}: expected {what}, got {describe_error(err)}") from None
    if limit is not None and len(data) > limit:  # it grew while we read it
        raise UserError(f"{path}: expected {what} of at most {limit:,} bytes, got more")
    return data


def read_text(path: StrPath, what: str = "a text file", *, limit: int | None = None) -> str:
    """The whole file as UTF-8 text; undecodable bytes are a UserError naming the offset."""
    data = read_bytes(path, what, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: expected {what} in UTF-8, got undecodable bytes at byte {err.start}"
        ) from None
