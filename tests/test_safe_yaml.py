"""gateway/config/safe_yaml.py builds every document exactly as yaml.CSafeLoader does:
same values and types (YAML 1.1 booleans, octal, sexagesimal...), same shared objects
for aliases, and the same exception with the same text for every error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.safe_yaml import (
    SafeLoader,
    YamlLimits,
    YamlRefused,
    load_bounded,
)

Reference = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TESTS = Path(__file__).parent


def outcome(text: str, loader: type) -> tuple[str, object]:
    try:
        return "ok", yaml.load(text, Loader=loader)
    except Exception as exc:  # the error itself is what we compare
        return type(exc).__name__, str(exc)


def same(a: object, b: object, pairs: dict[int, int] | None = None) -> bool:
    """Equal, with NaN equal to NaN and types compared too (True is not 1); containers
    shared (an alias) or recursive in one are shared or recursive alike in the other."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)  # type: ignore[arg-type]
    if not isinstance(a, dict | list):
        return a == b
    pairs = {} if pairs is None else pairs  # id in a -> id in b, and -(id in b) -> id in a
    if id(a) in pairs or -id(b) in pairs:
        return pairs.get(id(a)) == id(b) and pairs.get(-id(b)) == id(a)
    pairs[id(a)], pairs[-id(b)] = id(b), id(a)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k], pairs) for k in a)  # type: ignore[index, call-overload]
    return len(a) == len(b) and all(  # type: ignore[arg-type]
        same(x, y, pairs) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]


def assert_same(text: str) -> None:
    got, want = outcome(text, SafeLoader), outcome(text, Reference)
    assert got[0] == want[0], (text, got, want)
    if got[0] == "ok":
        assert same(got[1], want[1]), (text, got, want)
    else:
        assert got[1] == want[1], text


DOCUMENTS = [
    "",
    "# only a comment\n",
    "customer: acme\ndomains: [acme.example, Shop.Example.]\n",
    # YAML 1.1 booleans and null, as SafeLoader reads them (not as a YAML 1.2 reader would)
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: y\nh: ~\ni: null\nj:\nk: 'yes'\n",
    # integers: decimal, octal (0 prefix), hex, binary, sexagesimal, underscores, signs
    "a: 017\nb: 0x1F\nc: 0b101\nd: 1:30\ne: 1_000\nf: -42\ng: +7\nh: 0\ni: '017'\nj: 09\n",
    # floats, infinities, NaN, sexagesimal floats
    "a: 1.5\nb: .inf\nc: -.Inf\nd: .nan\ne: 1e3\nf: 6.02e+23\ng: 1:30.5\nh: 1_0.5\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10\nd: 2002-12-14Z\n",
    "bin: !!binary aGVsbG8=\n",
    "a: !!str 123\nb: !!int '12'\nc: !!float '1'\nd: !!bool 'yes'\ne: !!null ''\n",
    "quoted: \"tab\\there\"\nsingle: 'it''s'\nblock: |\n  two\n  lines\nfolded: >\n  one\n  line\n",
    "list:\n  - a\n  - [b, c]\n  - {d: e}\n  -\n  - - nested\n",
    # anchors and aliases: the alias is the very same object
    "base: &b {x: 1, y: [1, 2]}\ncopy: *b\nlist: &l [1]\nagain: *l\nscalar: &s 12\nref: *s\n",
    # merge keys, in all their forms
    "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n",
    "c:\n  <<: {x: 1}\n  x: 2\n",
    "c:\n  <<: 12\n",
    "c:\n  <<: [12]\n",
    # the '=' value key
    "a:\n  =: 1\n  b: 2\n",
    "= : 1\n",
    # other tags SafeLoader knows
    "s: !!set {a, b}\n",
    "o: !!omap [{a: 1}, {b: 2}]\n",
    "p: !!pairs [{a: 1}, {a: 2}]\n",
    "o: !!omap {a: 1}\n",
    # errors
    "a: !python/object:os.system x\n",
    "a: !custom 1\n",
    "? [a, b]\n: 1\n",
    "? {a: 1}\n: 1\n",
    "a: 1\n---\nb: 2\n",
    "a: [1, 2\n",
    "a: b: c\n",
    "\t- tab\n",
    "a: *nowhere\n",
    # recursion through an alias
    "&a [*a]\n",
    "&m {self: *m}\n",
    "a: &x [1, *x]\n",
    # duplicate keys: the last one wins, in the first one's place
    "a: 1\nb: 2\na: 3\n",
    # keys of every scalar type; 1 and true are the same dict key
    "1: int\ntrue: bool\n1.5: float\n~: none\n2001-01-01: date\n",
    "!!str 1: a\n1: b\n",
    "[1, 2]\n",
    "just a string\n",
    "12\n",
    "- !!str\n- !!int 3\n",
    "a: !!seq [1]\nb: !!map {c: d}\n",
    "a: !!map [1]\n",
    "a: !!seq {b: 1}\n",
    "a: !!str [1]\n",
    "a: !!int [1]\n",
    "a: !!int abc\n",
    "a: !!float abc\n",
    "a: !!bool maybe\n",
    "a: !!timestamp yesterday\n",
    "a: !!binary '@@@'\n",
    "a: !!binary é\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_a_document_loads_as_pyyaml_safe_loader_loads_it(text):
    assert_same(text)


def test_an_alias_is_the_same_object_as_its_anchor():
    data = yaml.load("base: &b {x: [1]}\ncopy: *b\n", Loader=SafeLoader)
    assert data["copy"] is data["base"]


def test_a_recursive_alias_builds_the_same_recursive_list():
    data = yaml.load("&a [1, *a]\n", Loader=SafeLoader)
    assert data[1] is data


def test_a_merge_key_does_not_change_a_document_loaded_again():
    # The fast path falls back to PyYAML from the untouched node tree; the merge is
    # applied once, with the explicit key winning.
    text = "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n"
    assert yaml.load(text, Loader=SafeLoader) == {"base": {"x": 1, "y": 2}, "d": {"x": 1, "y": 3}}


def every_yaml_file_in_the_tests() -> list[Path]:
    # tests/hostile_yaml/ holds alias bombs and such: built in full they exhaust the
    # comparison (tests/test_config_hostile_yaml.py proves they are refused instead).
    return sorted(p for p in TESTS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and "hostile_yaml" not in p.parts)


def test_every_yaml_file_of_the_test_suite_loads_the_same():
    files = every_yaml_file_in_the_tests()
    assert any("bad_configs" in str(p) for p in files)
    for path in files:
        assert_same(path.read_text(encoding="utf-8", errors="replace"))


scalars = st.one_of(
    st.sampled_from(["yes", "No", "on", "OFF", "y", "n", "~", "null", "017", "0x1f", "0b11",
                     "1:30", "1_000", ".inf", "-.inf", ".NaN", "1e3", "2001-12-14", "<<", "=",
                     "'quoted'", '"dq"', "0o17", "1.5", "+1", "-0", "", "Null", "NULL", "True"]),
    st.text(alphabet="abyYnNoO01:._-+eE~x=<'\" ", max_size=8),
)


@st.composite
def documents(draw, depth: int = 0) -> str:
    """A small YAML document in flow style built from tricky scalars."""
    kind = draw(st.sampled_from(["scalar", "seq", "map"] if depth < 3 else ["scalar"]))
    if kind == "scalar":
        return draw(scalars)
    items = draw(st.lists(documents(depth + 1), max_size=4))  # type: ignore[call-arg]
    if kind == "seq":
        return "[" + ", ".join(items) + "]"
    keys = draw(st.lists(scalars, min_size=len(items), max_size=len(items)))
    return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True)) + "}"


@settings(max_examples=400, deadline=None)
@given(documents())
def test_random_flow_documents_load_the_same(text):
    assert_same(text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
))
def test_whatever_pyyaml_writes_loads_the_same(value):
    assert_same(yaml.safe_dump(value))


# --- bounded loading (issue 14: hostile YAML) ------------------------------------

TINY = YamlLimits(max_bytes=4096, max_depth=4, max_alias_nodes=20, max_number_chars=8)
# Fragments that make anchors, aliases, tags, deep and odd documents likely.
fragments = st.sampled_from(["&a ", "*a", "&b ", "*b", "[", "]", "{", "}", ", ", ": ", "- ", "\n",
                             "  ", "!!int ", "!!str ", "!!set ", "<<: ", "? ", "'", '"', "#",
                             "123456789012", "1e999", "2001-13-45", "\x00", "\t", "|\n", "--- "])


@settings(max_examples=600, deadline=None)
@given(st.lists(fragments | scalars, max_size=40).map("".join) | st.text(max_size=60))
def test_any_input_gives_a_value_or_one_refusal_never_another_exception(text):
    try:
        value = load_bounded(text, TINY)
    except YamlRefused as exc:
        assert exc.problem and "\n" not in exc.problem
        return
    # What is accepted is what the unbounded loader builds.
    assert same(value, yaml.load(text, Loader=Reference))


@pytest.mark.parametrize(("text", "problem"), [
    ("a: &a [1, 1, 1, 1, 1]\nb: [*a, *a, *a, *a, *a]\n", "aliases expand to more than 20 nodes"),
    ("x: [[[[1]]]]\n", "nested more than 4 levels deep"),
    ("x: 123456789\n", "a number of 9 characters (at most 8)"),
    ("x: &a [*a]\n", "an alias refers to a collection that contains it"),
    ("x" * 4097, "larger than 4,096 bytes"),
])
def test_each_limit_refuses_with_its_own_reason(text, problem):
    with pytest.raises(YamlRefused) as refused:
        load_bounded(text, TINY)
    assert problem in refused.value.problem


def test_within_the_limits_aliases_and_nesting_load():
    assert load_bounded("a: &a [1, 2]\nb: *a\nc: [[[x]]]\nn: 12345678\n", TINY) == {
        "a": [1, 2], "b": [1, 2], "c": [[["x"]]], "n": 12345678}
