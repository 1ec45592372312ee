"""The interpreter a bench runs its gateways on, for its table's heading.

How Python was built moves every figure (docs/operations.md, "Which Python"):
a table says which one it measured.
"""

from __future__ import annotations

import os
import platform
import sys


def interpreter() -> str:
    """'Python 3.11.2 (/usr/bin/python3.11)': the version and the real binary."""
    return f"Python {platform.python_version()} ({os.path.realpath(sys._base_executable)})"
