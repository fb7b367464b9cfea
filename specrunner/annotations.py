"""Diagnostics as lines of text or as GitHub workflow commands (annotations), in one place.

`text`:   `file:line:col: severity: message [json.path] (hint)` (Diagnostic.format)
`github`: `::error file=F,line=L,col=C,title=specrunner CODE::message [json.path] (hint)`,
          `::warning ...` for warnings and `::notice ...` for notes, which a GitHub Actions
          step turns into annotations on the pull request's files.

Escaping follows GitHub's runner (actions/toolkit, command.ts): in the message `%`, `\\r`
and `\\n` become `%25`, `%0D` and `%0A`; in property values `:` and `,` also become `%3A`
and `%2C`. So a message keeps its newlines and no value can end a property early.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from specrunner.errors import Diagnostic

FORMATS = ("text", "github")
# Diagnostic severity -> workflow command.
COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}


def escape_data(text: str) -> str:
    """A workflow command's message, escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value, escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str, **properties: object) -> str:
    """`::command key=value,...::message`, leaving out properties that are None."""
    props = ",".join(f"{k}={escape_property(str(v))}" for k, v in properties.items()
                     if v is not None)
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


def github_line(d: Diagnostic) -> str:
    """`d` as a GitHub workflow command (error, warning or notice)."""
    text = d.message + (f" [{d.path}]" if d.loc or d.path != "$" else "") + (
        f" ({d.hint})" if d.hint else "")
    loc = d.loc  # None for a problem of the whole file: annotate the file, no line
    return workflow_command(COMMANDS.get(d.severity, "error"), text,
                            file=loc.file if loc else d.file, line=loc.line if loc else None,
                            col=loc.col if loc else None, title=f"specrunner {d.code}")


def format_diagnostic(d: Diagnostic, fmt: str) -> str:
    """`d` in output format `fmt` ("text" or "github")."""
    return github_line(d) if fmt == "github" else d.format()


class DiagnosticWriter:
    """Writes diagnostics in one format, counting errors and warnings; a note (a fact about
    the model, the same for every spec) is written once per writer."""

    def __init__(self, out: TextIO, fmt: str = "text",
                 redact: Iterable[str] = ()) -> None:
        self.out, self.fmt = out, fmt
        self.secrets = tuple(s for s in redact if s)
        self.errors = self.warnings = 0
        self._notes: set[tuple[str, str]] = set()

    def write(self, diagnostics: Iterable[Diagnostic]) -> None:
        """Write each diagnostic (notes already written are skipped)."""
        for d in diagnostics:
            if d.severity == "note":
                if (d.code, d.message) in self._notes:
                    continue
                self._notes.add((d.code, d.message))
            self.errors += d.severity == "error"
            self.warnings += d.severity == "warning"
            self.out.write(self.redacted(format_diagnostic(d, self.fmt)) + "\n")

    def redacted(self, text: str) -> str:
        """`text` with every secret replaced by [redacted]."""
        for s in self.secrets:
            text = text.replace(s, "[redacted]")
        return text
