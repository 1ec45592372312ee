"""What each customer policy file parsed to, so a reload re-parses only changed files.

An entry is keyed by the file's path and is valid while the file's
(st_mtime_ns, st_size, st_ino) are unchanged: an editor that writes a new file
and renames it over the old one changes the inode; an edit in place changes
the modification time and usually the size.  A file touched without changes is
re-parsed (its mtime moved) and simply gives the same result.

File times have a coarse granularity (a kernel tick), so a file rewritten with
the same size right after it was read could keep the same key: as git does with
its index ("racy git"), a result is not trusted if the file was modified less
than :data:`RACY_NS` before the directory was scanned; such a file is parsed
again at the next load, and trusted once it is old enough.

The cache holds each file's own result only (the policy, or that file's
errors); clashes between files (customer id, domains, logins) depend on the
whole set and are checked again on every load.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.errors import ConfigError
from gateway.config.policy import CustomerPolicy

# (st_mtime_ns, st_size, st_ino) of a file when it was parsed.
FileKey = tuple[int, int, int]

# A file modified this recently before the scan may change again unseen.
RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One policy file's own result: a policy, or the errors that file has by itself."""

    key: FileKey
    policy: CustomerPolicy | None
    errors: tuple[ConfigError, ...]


class PolicyCache:
    """Per-file parse results across loads; not thread-safe (one load at a time)."""

    def __init__(self) -> None:
        self._entries: dict[str, ParsedFile] = {}  # only results safe to reuse
        self.parsed = 0  # files parsed through this cache, ever (tests and logs read it)
        self.reused = 0  # files whose cached result was used

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, key: FileKey) -> ParsedFile | None:
        """The cached result for ``path`` if the file is unchanged since, else None."""
        entry = self._entries.get(path)
        if entry is None or entry.key != key:
            return None
        self.reused += 1
        return entry

    def put(self, path: str, entry: ParsedFile, scanned_ns: int) -> None:
        """Remember what ``path`` parsed to; ``scanned_ns``: when its stat key was taken."""
        self.parsed += 1
        if entry.key[0] < scanned_ns - RACY_NS:
            self._entries[path] = entry
        else:
            self._entries.pop(path, None)

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are no longer in the policy directory."""
        for gone in self._entries.keys() - paths:
            del self._entries[gone]
