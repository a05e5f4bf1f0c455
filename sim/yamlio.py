"""The one YAML loader: every YAML text moesim reads (scenario, sweep, trace.yaml, manifests,
presets, ``--set`` values) is parsed here, with one set of one-line errors.

Beyond ``yaml.safe_load`` it refuses:

* a key given twice in one mapping (PyYAML keeps the last silently), naming both lines;
* alias expansion past `MAX_ALIAS_NODES` nodes: the composed node graph is measured (each
  alias counted as the nodes it stands for) before anything is constructed, so a
  billion-laughs document costs microseconds even under a key that is ignored later
  (``provenance:``); a recursive alias (an anchor used inside itself) likewise;
* a file larger than `MAX_YAML_BYTES`, before it is read (`sim.opener`);
* unreadable bytes, nesting deeper than Python's recursion limit (RecursionError), an integer
  literal longer than Python converts (ValueError): each a UserError naming the file.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from sim import opener
from sim.errors import UserError, one_line
from sim.limits import MAX_ALIAS_NODES, MAX_YAML_BYTES

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlSyntaxError(UserError):
    """The text is not YAML at all (``--set`` then takes it as a plain string)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: 3x faster


class _Loader(_BASE):  # type: ignore[misc,valid-type]
    """The safe loader refusing duplicate keys (merge keys ``<<`` keep their meaning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # unhashable: the base constructor says so
                continue
        return super().construct_mapping(node, deep)


def expanded_size(root: yaml.Node) -> tuple[int, int]:
    """``(unique, expanded)`` node counts of a composed document: ``expanded`` counts a node
    once per place it appears (aliases included). Iterative (documents may nest 5000 deep);
    ValueError for a recursive alias."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            busy.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if key in sizes:
            continue
        if key in busy:
            raise ValueError("recursive alias")
        busy.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in busy:
                raise ValueError("recursive alias")
            if id(child) not in sizes:
                stack.append((child, False))
    return len(sizes), sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document; any failure is a one-line UserError naming ``where``."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as err:
        raise YamlSyntaxError(
            f"{where}: expected readable YAML, got {one_line(err, 300)}"
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:  # without an anchor there is no alias: nothing to measure
            unique, expanded = expanded_size(node) if "&" in text else (0, 0)
        except ValueError:
            raise UserError(
                f"{where}: expected YAML without recursive aliases, got an anchor used inside "
                "itself"
            ) from None
        if expanded - unique > MAX_ALIAS_NODES:
            raise UserError(
                f"{where}: expected aliases to expand to at most {MAX_ALIAS_NODES:,} nodes, got "
                f"{expanded - unique:,} (the document has {unique:,} nodes of its own)"
            )
        return loader.construct_document(node)
    except _DuplicateKey as dup:
        raise UserError(
            f"{where}: line {dup.again}: expected each key once per mapping, got {dup.key!r} "
            f"again (first at line {dup.first})"
        ) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(
            f"{where}: expected readable YAML, got {one_line(err, 300)}"
        ) from None
    except RecursionError:
        raise UserError(
            f"{where}: expected readable YAML, got nesting deeper than Python's recursion limit"
        ) from None
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise UserError(f"{where}: expected readable YAML, got {one_line(err, 300)}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], what: str = "a YAML file") -> Any:
    """Load a YAML file through the one opener: a missing, non-regular, oversized, unreadable
    or malformed file is a one-line UserError."""
    text = opener.read_text(path, what, limit=MAX_YAML_BYTES)
    return parse_yaml(text, str(path))
