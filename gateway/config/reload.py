"""The gateway file's ``reload:`` section: what a SIGHUP may change, and how long it may take."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.config.base import Seconds, Strict


class ReloadSettings(Strict):
    # A reload that would leave out more than this share of the customers in force
    # is refused (0.5: more than half).  A policy directory emptied or half-copied by
    # mistake must not bounce every customer's mail; 1 lets any reload through, with
    # the warning naming the customers dropped.  The value of the file being loaded
    # counts, so a planned large removal raises it in the same change.
    max_customer_drop: Annotated[float, Field(ge=0, le=1)] = 0.5
    # A reload still loading after this long is refused (the configuration in force
    # stays); the next one is refused until the slow load has finished.
    timeout: Seconds = 60.0
