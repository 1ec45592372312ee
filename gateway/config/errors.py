"""Configuration errors: one line each, naming the file, the field and the problem."""

from __future__ import annotations

from dataclasses import dataclass

# An error line is read by a person and kept in logs: a problem quoting a hostile
# file (a 312 MB alias expansion, issue 14) is cut to this many characters.
MAX_LINE = 300


@dataclass(frozen=True)
class ConfigError:
    file: str
    field: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return one_line(f"{where}: {self.problem}")


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (line breaks made spaces), cut to ``limit`` characters."""
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ConfigErrors(Exception):
    """Raised by the loader with every error it found, not only the first."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
