"""The errors a user can fix, and the exit codes every entry point gives them (docs/design.md §12).

0 ok; 1 a regression (a metric beyond its tolerance, a broken claim, a case or metric that vanished); 2 bad input
(`BadInput`: a spec, file, option or SAE that cannot be used); 130 interrupted. Entry points turn a `BadInput` into
one message (pytest: a usage error at collection; the CLI: one line on stderr) and show a traceback only when asked.
"""

from __future__ import annotations

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(ValueError):
    """Input that cannot be used; the message says what, where and how to fix it."""


class UnusableSAE(BadInput):
    """An SAE that cannot be evaluated (NaN or Inf weights or output, the wrong width or hook): bad input, not a
    regression. `spec` names it as its case file or `--sae` did; `variant` is its index in a shared pass."""

    def __init__(self, message: str, *, spec: str | None = None, variant: int | None = None):
        super().__init__(message if spec is None else f"SAE {spec}: {message}")
        self.spec, self.variant, self.reason = spec, variant, message

    def named(self, spec: str) -> UnusableSAE:
        """The same error, naming the SAE by its spec."""
        return UnusableSAE(self.reason, spec=spec, variant=self.variant)


class CaseFileError(BadInput):
    """A case file that cannot be used; the message names the file, the field and the fix."""

    def __init__(self, path, where: str, problem: str, fix: str):
        super().__init__(f"{path}: {where}: {problem}. Fix: {fix}")


class UnitFailed(BadInput):
    """A unit's task could not measure its cases (out of memory, its worker lost past the retries)."""
