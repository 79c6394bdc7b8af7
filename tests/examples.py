"""How many examples the shape-drawing property tests draw.

Each example of these tests draws a new shape, and every jitted function it calls
compiles anew for it (0.2-0.7 s a draw on two cores): at their full counts they took
about a fifth of the fast suite, which must stay under 10 minutes. The fast suite
draws half (at least 10); CI's "property tests at full count" step reruns their
files with ``SELREL_FULL_PROPERTIES=1`` (``.ci/run``; a test checks that it names
every file that uses :func:`examples`).
"""

from __future__ import annotations

import os

#: True in CI's full-count step: every test draws its full count.
FULL = os.environ.get("SELREL_FULL_PROPERTIES") == "1"


def examples(full: int) -> int:
    """``full`` under ``SELREL_FULL_PROPERTIES=1``, else half of it, at least 10."""
    return full if FULL else max(10, full // 2)
