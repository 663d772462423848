"""One base for every error a user can act on: bad input, a bad option, an unusable model, a
run folder or output path that cannot be used. The command line prints such an error as one
line and exits 2; anything else is a bug or an environment failure (exit 1)."""

from __future__ import annotations

from collections.abc import Sequence


class ReportgenError(Exception):
    """An error whose message names the input, the problem and the fix."""


class SettingsError(ReportgenError, ValueError):
    """An option out of range or unknown; the message uses the command line's option name."""


class InputError(ReportgenError, ValueError):
    """Malformed inputs; one line per problem, each naming the file and line."""

    MAX_REPORTED = 20

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[: self.MAX_REPORTED]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more problems"] if more else [])))


class ModelError(ReportgenError, RuntimeError):
    """The model cannot be loaded or used; the message says why and what to do."""


class SaliencyError(ReportgenError, ValueError):
    """An input or option the saliency engine cannot work with; the message names it."""


class RunError(ReportgenError, RuntimeError):
    """A run folder that cannot be read; the message says which and why."""


class OutputError(ReportgenError, RuntimeError):
    """The output path cannot be written; the message says why and what to do."""


class ConfigError(ReportgenError, ValueError):
    """A config file (reportgen.toml, pyproject.toml) that cannot be used; names file and key."""
