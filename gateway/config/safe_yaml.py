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

:func:`load_bounded` is how the gateway reads every YAML file (gateway file, policy
files, DKIM key metadata): hostile or broken input costs bounded time and memory
and ends in one :class:`YamlRefused` line, never another exception (issue 14):

* the file's size is capped before parsing (:class:`YamlLimits`.max_bytes);
* libyaml itself refuses nesting past 1,000 levels while scanning; the node tree
  is then measured without recursion: nesting past ``max_depth`` levels, and
  aliases that expand to more than ``max_alias_nodes`` nodes beyond the document's
  own (a "billion laughs" expands 1 KB into 10^9 nodes), are refused before
  anything is built from it; so are ints and floats longer than
  ``max_number_chars`` (Python refuses to convert a 5,000-digit int, and a long
  one costs quadratic time);
* any other failure of a constructor is a refusal too (the property test in
  tests/test_safe_yaml.py found an empty ``!!int`` raising IndexError).

With these bounds, parsing a file costs time and memory linear in its size, so what
a load can take is bounded by the limits and the number of files.  A reload parses
in a thread without stalling the listeners: libyaml calls PyYAML's resolver (Python)
for every node, so the GIL changes hands every few milliseconds even inside one
document (measured: 40 ms at most while 400,000 domains load, with the cyclic
collector off as load_policies has it).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.config.errors import one_line

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


# --- bounded loading ---------------------------------------------------------------

@dataclass(frozen=True)
class YamlLimits:
    """What one YAML file may cost."""

    max_bytes: int
    # Levels of nested collections; the deepest real file has about 5.
    max_depth: int = 32
    # Nodes that aliases may add to the document's own (each use of an alias counts
    # every node of what it refers to).
    max_alias_nodes: int = 10_000
    # Characters of an int or float scalar: 64-bit values need at most 20 digits.
    max_number_chars: int = 64


# The gateway file, a customer's policy file (200,000 domains are about 7 MB), the
# <selector>.yaml next to a DKIM key.
GATEWAY_FILE = YamlLimits(max_bytes=1 << 20)
POLICY_FILE = YamlLimits(max_bytes=16 << 20)
KEY_METADATA = YamlLimits(max_bytes=64 << 10)

_NUMBER_TAGS = frozenset(("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"))


class YamlRefused(Exception):
    """A document that is not valid YAML or exceeds a limit: where, and why."""

    def __init__(self, line: int | None, problem: str):
        super().__init__(problem)
        self.line = line  # 1-based, when known
        self.problem = problem


def load_bounded(text: str, limits: YamlLimits) -> object:
    """The document in ``text``, as :class:`SafeLoader` builds it, within ``limits``;
    :class:`YamlRefused` for any problem."""
    if len(text) > limits.max_bytes:  # callers check the bytes; characters are fewer
        raise YamlRefused(None, f"larger than {limits.max_bytes:,} bytes")
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, limits, len(text))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _refused(exc) from None
    except YamlRefused:
        raise  # _measure's own, as it is
    except RecursionError:
        # Without libyaml, PyYAML's Python composer recurses per level.
        raise YamlRefused(None, f"nested more than {limits.max_depth} levels deep") from None
    except Exception as exc:
        # PyYAML constructors' own failures: a date out of range (ValueError), an
        # empty "!!int " (IndexError), ... (the property test in test_safe_yaml.py).
        raise YamlRefused(None, one_line(f"cannot be read: {type(exc).__name__}: {exc}")) from None
    finally:
        loader.dispose()


def _refused(exc: yaml.YAMLError) -> YamlRefused:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return YamlRefused(mark.line + 1 if mark is not None else None,
                       one_line(f"YAML syntax error: {problem}"))


def _measure(root: Node, limits: YamlLimits, text_len: int) -> None:
    """Refuse a node tree that is too deep, expands too far through aliases, or holds
    an over-long number; a loop, not recursion, and each distinct collection once.

    A scalar counts once per occurrence (an alias to one costs two bytes of text, so
    the size limit bounds those); collections are measured once and reused.
    """
    if root.__class__ is ScalarNode:
        _check_scalar(root, limits)
        return
    size: dict[int, int] = {}  # id(collection) -> nodes it expands to, itself included
    height: dict[int, int] = {}  # id(collection) -> levels of collections, itself included
    open_: set[int] = set()  # collections whose children are being measured
    # A document without aliases has at most about one node per byte.
    cap = text_len + limits.max_alias_nodes
    distinct = 0
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            total, levels = 1, 0
            for child in children:
                if child.__class__ is ScalarNode:
                    total += 1
                else:
                    total += size[id(child)]
                    levels = max(levels, height[id(child)])
            levels += 1
            if total > cap:
                raise _too_many(node, limits)
            if levels > limits.max_depth:
                raise YamlRefused(node.start_mark.line + 1,
                                  f"nested more than {limits.max_depth} levels deep")
            size[key], height[key] = total, levels
            open_.discard(key)
            continue
        if key in size:
            continue  # an alias to a collection measured already
        if key in open_:
            raise YamlRefused(node.start_mark.line + 1,
                              "an alias refers to a collection that contains it")
        distinct += 1
        open_.add(key)
        stack.append((node, True))
        for child in reversed(children):
            if child.__class__ is ScalarNode:
                distinct += 1
                _check_scalar(child, limits)
            else:
                stack.append((child, False))
    if size[id(root)] > distinct + limits.max_alias_nodes:
        raise _too_many(root, limits)


def _check_scalar(node: Node, limits: YamlLimits) -> None:
    if node.tag in _NUMBER_TAGS and len(node.value) > limits.max_number_chars:
        raise YamlRefused(node.start_mark.line + 1,
                          f"a number of {len(node.value):,} characters "
                          f"(at most {limits.max_number_chars})")


def _too_many(node: Node, limits: YamlLimits) -> YamlRefused:
    return YamlRefused(node.start_mark.line + 1,
                       f"aliases expand to more than {limits.max_alias_nodes:,} nodes "
                       "beyond the document's own")


def _children(node: Node) -> list[Node]:
    if node.__class__ is MappingNode:
        return [n for pair in node.value for n in pair]
    return node.value  # a SequenceNode's
