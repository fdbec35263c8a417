"""Errors that users see: one line naming the file and the problem, never a traceback."""

from __future__ import annotations

from pathlib import Path


class LungXError(Exception):
    """Base class for errors reported to the user as a single line."""


class InputError(LungXError):
    """An input cannot be processed (unreadable, wrong modality, implausible content)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
