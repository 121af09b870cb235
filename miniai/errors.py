"""The error classes of miniai for problems of input, files or machine, not bugs: `miniai train` prints these as one
line `miniai: error: ...` (exit code 1), while any other exception, a bug, keeps its traceback.

Each also derives from the builtin a caller would have caught before (ValueError, OSError), so `except ValueError`
around a miniai call keeps working.
Described in docs/reliability.md.
"""
from __future__ import annotations

__all__ = ['MiniaiError', 'UsageError', 'DataError', 'OutputError']


class MiniaiError(Exception):
    """An error caused by the input, the files or the machine, not by a bug; its message says what to do."""


class UsageError(MiniaiError, ValueError):
    """A flag, a config file or an argument that cannot work; the message says which and what to use instead."""


class DataError(MiniaiError, ValueError):
    """A data file that is corrupt, truncated or inconsistent."""


class OutputError(MiniaiError, OSError):
    """An output file could not be written (disk full, permissions, ...); the previous file, if any, is intact."""
    def __str__(self): return self.strerror
