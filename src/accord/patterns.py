"""Regular expressions that users write (segment, journey and computed-trait conditions; the identity
rules' blocked identifiers), run so that none can stall a process.

Python's `re` backtracks: a pattern such as `(a|aa)+$` takes exponential time on `aaaa...!`, and holds
the GIL while it does, so one careless condition could stop a worker and every thread of its process.
These patterns run on the `regex` module instead: the same syntax and meaning as `re` (its VERSION0),
but each match lets other threads run and has a time limit (MATCH_SECONDS). A new pattern is refused
when a probe against such subjects runs out of time (`problem`). One that runs out of time later, on a
value the probes did not foresee, is switched off in that process: from then on it matches nothing, and
the log says so once (with a digest of the pattern, which may hold personal data, never the pattern).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable
from typing import Any

import regex
import structlog

from accord.metrics import PATTERNS_SWITCHED_OFF

log = structlog.get_logger(__name__)

MATCH_SECONDS = 0.2
PROBE_SECONDS = 0.05
# Backtracking that grows exponentially shows at 64 characters; as the cube or worse at 2,000. A square
# (a+b on aaaa...) does not: searched from every position, it is what many ordinary patterns do.
PROBE_LENGTHS = (64, 2_000)
_PROBE_CHARS = "a0 -._@"
_SYNTAX = set("\\()[]{}*+?|^$")


class Pattern:
    """One compiled pattern; `use` names what it is for, in the log and the metrics."""

    def __init__(self, text: str, *, use: str, ignore_case: bool = False) -> None:
        self.text = text
        self.use = use
        self.switched_off = False
        self._compiled = _compile(text, ignore_case)

    def search(self, subject: str) -> bool:
        """Whether the pattern matches somewhere in `subject`."""
        return self._run(self._compiled.search, subject)

    def fullmatch(self, subject: str) -> bool:
        """Whether the pattern matches all of `subject`. (A match with a time limit costs about 2 us: the
        identity rules, which ask about every identifier the worker reads, remember their answers.)"""
        return self._run(self._compiled.fullmatch, subject)

    def _run(self, match: Callable[..., Any], subject: str) -> bool:
        if self.switched_off:
            return False
        try:
            return match(subject, timeout=MATCH_SECONDS, concurrent=True) is not None
        except TimeoutError:
            self.switched_off = True
            PATTERNS_SWITCHED_OFF.labels(self.use).inc()
            log.warning(
                "a regular expression ran out of time and is switched off in this process: it matches nothing",
                use=self.use,
                pattern_sha256=hashlib.sha256(self.text.encode()).hexdigest()[:16],
                pattern_length=len(self.text),
                seconds=MATCH_SECONDS,
            )
            return False


def compiles(text: str, *, ignore_case: bool = False) -> str | None:
    """Why `text` does not compile, or None."""
    return _compiled_or_why(text, ignore_case)[1]


def _compile(text: str, ignore_case: bool) -> regex.Pattern[str]:
    return regex.compile(text, regex.VERSION0 | (regex.IGNORECASE if ignore_case else 0))


def _compiled_or_why(text: str, ignore_case: bool) -> tuple[regex.Pattern[str] | None, str | None]:
    try:
        return _compile(text, ignore_case), None
    except (regex.error, ValueError, OverflowError) as error:
        return None, f"does not compile: {error}"


def problem(text: str, *, ignore_case: bool = False) -> str | None:
    """Why `text` cannot be used as a new pattern (it does not compile, or it backtracks for too long on a
    probe: the characters it names, or common ones, repeated, then one that does not fit), or None."""
    compiled, why = _compiled_or_why(text, ignore_case)
    if compiled is None:
        return why
    named = [c for c in dict.fromkeys(text) if c not in _SYNTAX and c in string.printable and not c.isspace()]
    for char in dict.fromkeys(named[:16] + list(_PROBE_CHARS)):
        for length in PROBE_LENGTHS:
            for end in ("!", "\n", ""):
                subject = char * length + end
                try:
                    compiled.search(subject, timeout=PROBE_SECONDS, concurrent=True)
                    compiled.fullmatch(subject, timeout=PROBE_SECONDS, concurrent=True)
                except TimeoutError:
                    shown = f"{char * 4}... ({length} characters{', then ' + repr(end) if end else ''})"
                    return (
                        f"can take too long: it backtracks for more than {PROBE_SECONDS} s on {shown}; "
                        "rewrite repetition inside repetition, such as (a|aa)+ or (x+x+)+"
                    )
    return None
