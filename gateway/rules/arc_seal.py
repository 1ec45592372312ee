"""Whether to seal an inbound message with ARC, and the ``cv=`` the seal carries
(RFC 8617 §5.1), from our own verdict on the chain it arrived with.

Plain data in, a :class:`SealDecision` out; gateway/smtp/pipeline/arc_sealing.py
gathers the facts and makes the seal.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 8617 §4.2.1: i= runs from 1 to 50.
MAX_INSTANCE = 50


@dataclass(frozen=True, slots=True)
class SealDecision:
    seal: bool
    cv: str = ""  # none | pass | fail (RFC 8617 §4.1.3)
    reason: str = ""  # why not, for the log


def decide_seal(our_arc: str, instances: int, newest_cv: str) -> SealDecision:
    """``our_arc``: the arc= result of our Authentication-Results (pass, fail, none,
    temperror, permerror); ``instances``: the ARC sets the message arrived with;
    ``newest_cv``: the cv= of its newest ARC-Seal ("" without one)."""
    if newest_cv == "fail":
        # §5.1.1 step 1: a chain that already says it failed is not continued.
        return SealDecision(False, reason="the newest ARC-Seal already says cv=fail")
    if instances + 1 > MAX_INSTANCE:
        return SealDecision(False, reason=f"the chain already has {instances} sets (§4.2.1: at most 50)")
    if our_arc in ("temperror", "permerror") or (our_arc == "none" and instances):
        # A chain we could not evaluate (DNS failed) is not ours to call failed:
        # cv=fail would end a chain that may be valid (§5.1.1 allows only pass/fail
        # after i=1), so the message goes on unsealed and the log says why.
        return SealDecision(False, reason=f"our ARC verdict is {our_arc}: nothing to seal with")
    if instances == 0:
        return SealDecision(True, "none")  # §5.1.1 step 5: i=1 carries cv=none
    return SealDecision(True, "pass" if our_arc == "pass" else "fail")
