"""Reading YAML that users hand us: one function, one set of one-line errors.

A user's YAML can fail to load in more ways than ``yaml.YAMLError``: unreadable bytes
(UnicodeDecodeError), nesting deeper than Python's recursion limit (RecursionError), an integer
literal longer than Python converts (ValueError). Each becomes a UserError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sim.errors import UserError, one_line


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; any failure is a one-line UserError naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: expected readable YAML, got {one_line(err, 300)}") from None
    except RecursionError:
        raise UserError(
            f"{where}: expected readable YAML, got nesting deeper than Python's recursion limit"
        ) from None
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise UserError(f"{where}: expected readable YAML, got {one_line(err, 300)}") from None


def read_yaml(path: str | os.PathLike[str], what: str = "a YAML file") -> Any:
    """Load a YAML file; a missing, unreadable or malformed file is a one-line UserError."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{file}: expected {what}, got a directory")
    if not file.exists():
        raise UserError(f"{file}: expected {what}, got no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file}: expected {what} in UTF-8, got undecodable bytes") from None
    except OSError as err:
        raise UserError(f"{file}: expected {what}, got {err.strerror or err}") from None
    return parse_yaml(text, str(file))
