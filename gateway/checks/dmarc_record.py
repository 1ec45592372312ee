"""The DMARC Policy Record (RFC 9989 §4.7, §4.8): one TXT string in, a record or None out.

Pure and cached: records repeat across messages, and a :class:`DmarcRecord` is frozen.
RFC 7489 records parse the same way: their ``pct``, ``rf`` and ``ri`` tags are
"historic" in RFC 9989's tag registry (§9.3) and, like every tag not defined for
processing, are ignored (§4.7).  ``pct=0`` has ``t=y`` as its successor (Appendix A.6);
we do not translate it, as RFC 9989 does not ask receivers to.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

POLICIES = ("none", "quarantine", "reject")

# §4.7 "v": the first tag, value exactly "DMARC1" (case sensitive, %s in §4.8's ABNF);
# the tag name is an ABNF literal, so "V" is "v".  *WSP around "=" (§4.8 "equals").
_VERSION = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
# §4.8 dmarc-uri: an RFC 3986 URI, with "," and "!" percent-encoded; an obsolete
# "!size" suffix (obs-dmarc-report-size) may follow and is ignored.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@$&'()*+;=]|%[0-9A-Fa-f]{2})*")
_OBS_SIZE = re.compile(r"![0-9]+[kmgtKMGT]?\Z")
# Values that are ABNF literals (case-insensitive, RFC 5234 §2.3); the URIs keep their case.
_FOLDED = frozenset({"p", "sp", "np", "adkim", "aspf", "fo", "t", "psd"})


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A record that passed the version test and the tag-list syntax, tags as published.

    ``p``, ``sp`` and ``np`` are kept as written (lower-cased): whether they are valid
    matters only when the record is applied (§4.10.1), not while walking the tree.
    """

    p: str = ""  # "" when absent
    sp: str = ""
    np: str = ""
    adkim: str = "r"
    aspf: str = "r"
    t: str = "n"  # §4.7 "t": y asks for the policy one level below the published one
    psd: str = "u"  # §4.7 "psd": y (a Public Suffix Domain), n (an Organizational Domain), u
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    text: str = ""

    @property
    def is_testing(self) -> bool:
        return self.t == "y"

    def policy_tags(self) -> tuple[str, str, str] | None:
        """(p, sp, np) to apply, "" for an absent sp/np; None when DMARC does not apply.

        §4.10.1: "If a retrieved DMARC Policy Record does not contain a valid 'p' tag, or
        contains an 'sp' or 'np' tag that is not valid, then: If a 'rua' tag is present and
        contains at least one syntactically valid reporting URI, the Mail Receiver MUST act
        as if a record containing 'p=none' was retrieved ...; Otherwise, the Mail Receiver
        applies no DMARC processing to this message."
        """
        if self.p in POLICIES and self.sp in ("", *POLICIES) and self.np in ("", *POLICIES):
            return self.p, self.sp, self.np
        return ("none", "", "") if self.rua else None


def is_dmarc_text(text: str) -> bool:
    """§4.10 step 2: "Records that do not start with a 'v' tag that identifies the current
    version of DMARC are discarded" (before the count of records at a name)."""
    return _VERSION.match(text.strip()) is not None


@functools.lru_cache(maxsize=4096)
def parse_record(text: str) -> DmarcRecord | None:
    """The record in ``text`` (TXT strings already joined, §4.5), or None to discard it."""
    if not is_dmarc_text(text):
        return None
    tags: dict[str, str] = {}
    for part in text.strip().split(";"):
        part = part.strip()
        name, sep, value = part.partition("=")
        name = name.strip()
        if not part or not sep or not name.isalpha() or not name.isascii():
            continue  # §4.8: "Syntax errors in the remainder ... MUST be ... ignored outright."
        if name.lower() == "v":
            name = "v"
        if name in tags:
            # §4.7: records use DKIM's tag-list syntax; RFC 6376 §3.2: "if a tag name does
            # occur more than once, the entire tag-list is invalid."  Tag names are case
            # sensitive there too, so "P=reject" is an unknown tag, not p.
            return None
        value = value.strip()
        tags[name] = value.lower() if name in _FOLDED else value
    return DmarcRecord(
        p=tags.get("p", ""),
        sp=tags.get("sp", ""),
        np=tags.get("np", ""),
        # §4.8: a value outside its syntax is "discarded in favor of default values".
        adkim="s" if tags.get("adkim") == "s" else "r",
        aspf="s" if tags.get("aspf") == "s" else "r",
        t="y" if tags.get("t") == "y" else "n",
        psd=tags["psd"] if tags.get("psd") in ("y", "n") else "u",
        rua=_uris(tags.get("rua", "")),
        ruf=_uris(tags.get("ruf", "")),
        text=text,
    )


def _uris(value: str) -> tuple[str, ...]:
    """The syntactically valid reporting URIs of a ``rua``/``ruf`` list (§4.8 dmarc-urilist)."""
    uris = []
    for item in value.split(","):
        uri = _OBS_SIZE.sub("", item.strip())
        if _URI.fullmatch(uri):
            uris.append(uri)
    return tuple(uris)
