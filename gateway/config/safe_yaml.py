"""PyYAML's safe loading, with the common documents built faster.

``yaml.load(text, Loader=SafeLoader)`` gives exactly what ``yaml.CSafeLoader``
gives -- same types, same YAML 1.1 resolution (``yes``/``on`` are booleans,
``0o17``/``017`` octal, ``1:30`` sexagesimal), same errors -- and only builds
the document faster.  libyaml scans, parses and composes the node tree in C and
PyYAML's resolver tags every scalar as usual; only the last step, turning nodes
into Python objects, is replaced for the node kinds a policy file is made of:

* a plain ``!!str`` scalar is its text;
* other scalars (``!!int``, ``!!bool``, ``!!null``, ``!!float``, ``!!timestamp``,
  ``!!binary``) go to SafeConstructor's own constructor for the tag;
* a ``!!seq`` is a list, a ``!!map`` a dict (later duplicate keys win, as there);
  an alias gives the very object its anchor built, as there.

Anything else -- a merge key (``<<``), a ``=`` value key, ``!!set``/``!!omap``/
``!!pairs``, an unknown tag, a recursive alias, an unhashable key, or any error
at all -- and the document is built again by SafeConstructor from the untouched
node tree, so rare inputs, and every error message, are PyYAML's own.  The fast
path never changes a node, which is what makes starting again safe.

At 100,000 policy files this halves the Python-side construction time
(bench/accounts.py); tests/test_safe_yaml.py compares both on many documents.
"""

from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# Scalar tags whose SafeConstructor constructor is a plain function of the node
# (not a generator, no recursion, no node changes).
_SCALAR_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "timestamp", "binary")
)


class _Slow(Exception):
    """This document needs SafeConstructor itself."""


class SafeLoader(_Base):  # type: ignore[misc, valid-type]
    """``yaml.CSafeLoader`` (or ``yaml.SafeLoader`` without libyaml), built faster."""

    def construct_document(self, node):  # type: ignore[no-untyped-def]
        try:
            return _Builder(self).build(node)
        except Exception:  # any surprise: PyYAML decides, as before
            return super().construct_document(node)


class _Builder:
    __slots__ = ("_loader", "_scalars", "_done", "_open")

    def __init__(self, loader: SafeLoader):
        self._loader = loader
        self._scalars = loader.yaml_constructors
        self._done: dict[object, object] = {}  # collection node -> what it built (aliases)
        self._open: set[int] = set()  # collection nodes being built (recursion)

    def build(self, node):  # type: ignore[no-untyped-def]
        cls = node.__class__
        if cls is ScalarNode:
            tag = node.tag
            if tag == _STR:
                return node.value
            if tag in _SCALAR_TAGS:
                return self._scalars[tag](self._loader, node)
            raise _Slow
        done = self._done.get(node, self)
        if done is not self:
            return done
        key = id(node)
        if key in self._open:
            raise _Slow  # a recursive structure: PyYAML's generators handle it
        self._open.add(key)
        build = self.build
        if cls is SequenceNode and node.tag == _SEQ:
            out: object = [build(child) for child in node.value]
        elif cls is MappingNode and node.tag == _MAP:
            mapping = {}
            for key_node, value_node in node.value:
                # A merge key (<<) or value key (=) is a scalar whose tag build() does
                # not know: it raises _Slow.  An unhashable key raises TypeError here.
                mapping[build(key_node)] = build(value_node)
            out = mapping
        else:
            raise _Slow
        self._open.discard(key)
        self._done[node] = out
        return out
