"""The building blocks every config model shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Strict(BaseModel):
    """Frozen, and unknown keys are errors: a misspelt option never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSFiles(Strict):
    cert: Path
    key: Path
