"""User-facing errors.

An ``LlmkitError`` carries a message written for the person at the shell: what went wrong,
where (file, line, byte offset, config key) and what to do. The CLI prints it without a
traceback unless ``--debug`` or ``LLMKIT_DEBUG=1`` asks for one.
"""

from __future__ import annotations


class LlmkitError(Exception):
    """An error caused by the user's input (config, data, checkpoint), not by a bug."""


class ConfigError(LlmkitError):
    """One or more problems in a composed config, reported together."""

    def __init__(self, problems: list[str], *, where: str = "config") -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the {where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class DataError(LlmkitError):
    """Bad input data: missing, empty, binary or malformed files."""


class CheckpointError(LlmkitError):
    """A checkpoint that is missing, truncated or belongs to another model."""


class DiskFullError(LlmkitError):
    """A write that ran out of space: names the folder, the bytes it needed and those free."""
