"""Atomic outputs: every file and results directory is built aside and renamed into place.

A killed run therefore leaves either the old output, the complete new one, or nothing: never a
partial result. An operating-system error while writing (read-only file system, disk full,
file-size limit, permission, a directory where a file should go) is one `UserError` line
naming the path and the error, and whatever was staged is removed first.

* `write_bytes` / `write_text` / `write_json` / `write_csv`: one file (temp file in the same
  directory, fsync, rename);
* `stage_bytes`: the same in two steps, for outputs that must appear together (a results
  directory and the ``--timeline`` copy): write now, `StagedFile.commit` later;
* `staged_dir`: a whole directory, written into a hidden sibling and then renamed into place
  (``new``), swapped with the old one (``replace``: ``--force``), or moved file by file into an
  existing directory (``merge``: reports written next to results).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sim import opener
from sim.errors import UserError

StrPath = str | os.PathLike[str]
DirMode = Literal["new", "replace", "merge"]


class WriteError(UserError):
    """An output could not be written (the operating system refused): nothing partial is
    visible; callers with incremental outputs (sweeps) add how to continue."""


def write_error(path: StrPath, err: OSError, doing: str = "write") -> WriteError:
    """``PATH: could not write (Read-only file system, EROFS)``: one line for an OS error."""
    name = errno.errorcode.get(err.errno or 0, "")
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(f"{path}: could not {doing} ({reason}{', ' + name if name else ''})")


@contextlib.contextmanager
def os_errors(path: StrPath, doing: str = "write") -> Iterator[None]:
    """Turn an OSError inside the block into `write_error`."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err, doing) from None


def make_dirs(path: StrPath) -> Path:
    """``mkdir -p``; a file in the way or an OS error is one line."""
    target = Path(path)
    kind = opener.describe(target)
    if kind not in ("a directory", "nothing (missing)"):
        raise UserError(f"{target}: expected a directory to write into, got {kind}")
    with os_errors(target, "create the directory"):
        target.mkdir(parents=True, exist_ok=True)
    return target


@dataclass
class StagedFile:
    """A fully written, fsynced temporary file waiting to be renamed onto ``target``."""

    target: Path
    tmp: Path
    done: bool = False

    def commit(self) -> Path:
        try:
            os.replace(self.tmp, self.target)
        except OSError as err:
            self.abort()
            raise write_error(self.target, err) from None
        self.done = True
        return self.target

    def abort(self) -> None:
        if not self.done:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.done = True


def stage_bytes(path: StrPath, data: bytes) -> StagedFile:
    """Write ``data`` into a hidden temporary file next to ``path``; `StagedFile.commit`
    renames it into place. Nothing is left behind when writing fails."""
    target = Path(path)
    kind = opener.describe(target)
    if kind not in ("a file", "nothing (missing)", "a dangling symlink"):
        # never rename over a directory, a FIFO or a device (--out /dev/null would replace it)
        raise UserError(f"{target}: expected a file path to write, got {kind}")
    make_dirs(target.parent)
    with os_errors(target):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _default_file_mode())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(target, err) from None
        raise
    return StagedFile(target, Path(tmp))


def write_bytes(path: StrPath, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    return stage_bytes(path, data).commit()


def _default_file_mode() -> int:
    """0666 less the process umask, as ``open(path, "w")`` would create."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text(path: StrPath, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: StrPath, obj: Any) -> Path:
    """Write JSON (sorted keys, 2-space indent, trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_csv(path: StrPath, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV table atomically (``\\n`` line endings)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual suspects in result records.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -- directories ---------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_dir(
    target: StrPath, mode: DirMode = "new", *, after: Sequence[StagedFile] = ()
) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``target``; when the block ends without an
    error its contents appear at ``target`` at once, else the staging directory is removed.

    ``new``: ``target`` must be absent or empty (it is replaced by one rename).
    ``replace``: an existing ``target`` is swapped with the staged one (one atomic exchange
    where the kernel offers it) and then deleted.
    ``merge``: each staged entry is renamed into the existing ``target``.
    ``after``: staged files committed right after the directory; if one fails the directory
    is put back as it was (outputs that must appear together)."""
    dest = Path(target)
    make_dirs(dest.parent)
    with os_errors(dest):
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        with os_errors(dest):
            os.chmod(tmp, 0o777 & ~_umask())
        undo, finish = _commit_dir(tmp, dest, mode)
        try:
            for staged in after:
                staged.commit()
        except BaseException:
            undo()
            raise
        finish()
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        for staged in after:
            staged.abort()
        if isinstance(err, WriteError) and str(tmp) in str(err):  # name the output, not
            raise WriteError(str(err).replace(str(tmp), str(dest))) from None  # its staging
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _commit_dir(tmp: Path, dest: Path, mode: DirMode) -> tuple[Any, Any]:
    """Move ``tmp`` into place; returns ``(undo, finish)``: ``undo`` puts things back as they
    were (best effort), ``finish`` removes what the commit set aside."""
    if mode == "merge" and dest.is_dir():
        return _merge(tmp, dest)
    kind = opener.describe(dest)
    if kind not in ("a directory", "nothing (missing)"):
        raise UserError(f"{dest}: expected a directory to write, got {kind}")
    if mode == "replace" and dest.is_dir() and any(dest.iterdir()):
        with os_errors(dest):
            _exchange(tmp, dest)  # tmp now holds the old directory

        def undo_exchange() -> None:
            with contextlib.suppress(OSError):
                _exchange(tmp, dest)

        return undo_exchange, lambda: shutil.rmtree(tmp, ignore_errors=True)
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"{dest}: expected a new or empty directory, got one that holds files")
    with os_errors(dest):
        os.rename(tmp, dest)  # replaces an empty directory on POSIX
    return lambda: shutil.rmtree(dest, ignore_errors=True), lambda: None


def _merge(tmp: Path, dest: Path) -> tuple[Any, Any]:
    """Rename every staged file into ``dest``, setting aside the files it replaces; if a
    rename fails, everything done so far is undone, so ``dest`` is as it was."""
    aside = tmp / ".replaced"
    done: list[tuple[Path, Path | None]] = []  # (file put in place, the older file set aside)
    made: list[Path] = []  # directories created in dest

    def undo() -> None:
        for placed, older in reversed(done):
            with contextlib.suppress(OSError):
                os.unlink(placed)
            if older is not None:
                with contextlib.suppress(OSError):
                    os.rename(older, placed)
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    staged = sorted(p for p in tmp.rglob("*") if not p.is_dir())
    try:
        with os_errors(dest):
            for src in staged:
                rel = src.relative_to(tmp)
                for parent in reversed(rel.parents[:-1]):
                    directory = dest / parent
                    if not directory.is_dir():
                        if directory.exists():
                            raise UserError(f"{directory}: expected a directory, got a file")
                        os.mkdir(directory)
                        made.append(directory)
                target = dest / rel
                if target.is_dir():
                    raise UserError(f"{target}: expected a file path to write, got a directory")
                older = None
                if target.exists() or target.is_symlink():
                    older = aside / rel
                    older.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(target, older)
                done.append((target, older))
                os.rename(src, target)
    except BaseException:
        undo()
        raise
    return undo, lambda: shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); where the kernel or
    file system cannot, move ``b`` aside and ``a`` into place (a moment with neither)."""
    libc_name = ctypes.util.find_library("c")
    func = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if func is not None:
        result = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.", suffix=".old", dir=b.parent))
    os.rename(b, aside / "old")
    try:
        os.rename(a, b)
    except OSError:
        os.rename(aside / "old", b)
        raise
    os.rename(aside / "old", a)
    os.rmdir(aside)
