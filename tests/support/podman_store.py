"""The container store the podman tests use: their own, with vfs storage.

tests/test_compose.py runs podman through podman-compose, which cannot be given
podman's ``--storage-driver``; tests/test_container.py passes it.  In the host's
default store they disagreed: on a fresh machine whose podman defaults to
overlay, the compose test (first by name) made the store with overlay, and every
vfs call of the container test after it failed with "database configuration
mismatch".  Both now point podman at one storage.conf of their own (through
CONTAINERS_STORAGE_CONF, which podman-compose's podman inherits): vfs, with its
own graph and run roots, so the tests never touch the host's images and an
operator's store never breaks the tests.  The images stay between runs (the
compose test reuses them).
"""

from __future__ import annotations

import os
from pathlib import Path

STORE = Path("/var/lib/portcullis-tests/containers")
STORAGE_CONF = STORE / "storage.conf"
_CONF = f"""[storage]
driver = "vfs"
graphroot = "{STORE / 'storage'}"
runroot = "/run/portcullis-tests/containers/storage"
"""


def use_test_store() -> None:
    """Every podman this process starts uses the tests' store (needs root)."""
    STORE.mkdir(parents=True, exist_ok=True)
    if not STORAGE_CONF.exists() or STORAGE_CONF.read_text() != _CONF:
        STORAGE_CONF.write_text(_CONF)
    os.environ["CONTAINERS_STORAGE_CONF"] = str(STORAGE_CONF)
