"""What fnmatch would silently misread in a glob pattern."""

from __future__ import annotations


def unclosed_bracket(pattern: str) -> bool:
    """Whether `pattern` opens a `[` set that no `]` closes. fnmatch then matches the `[` as
    itself, so a mistyped `*.layer[0-3.*` selects nothing and nobody is told. A `]` right after
    `[` or `[!` is a member of the set, as fnmatch reads it."""
    index = 0
    while (start := pattern.find("[", index)) >= 0:
        first = start + 1
        if pattern.startswith("!", first):
            first += 1
        if pattern.startswith("]", first):
            first += 1
        end = pattern.find("]", first)
        if end < 0:
            return True
        index = end + 1
    return False
