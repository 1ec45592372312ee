"""The ground floor: plain value types that every layer may name.

Nothing here imports anything of ours outside this package (import-linter holds
it: pyproject.toml, docs/architecture.md).  A module here holds frozen dataclasses,
constants and pure functions over them; never a socket, a file, a clock or a setting.
"""
