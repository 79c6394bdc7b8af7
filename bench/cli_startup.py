"""How long ``selrel --help`` (and an argument error) takes, as a whole process.

Each run starts a fresh interpreter through the ``selrel`` console script (or
``python -c`` calling the same entry point when it is not on PATH), so interpreter
start-up and every import the CLI makes are included; the code imported is the one
PYTHONPATH selects. Prints the median and range of ``--repeats`` runs per command
line. tests/cli/test_help.py checks that these import no JAX, TFDS, orbax or
matplotlib, which is what makes them fast.

Usage: ``python bench/cli_startup.py [--repeats 9]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMAND_LINES = (("--help",), ("explain", "--help"), ("explain", "--sigma", "x"))


def _selrel() -> list[str]:
    script = shutil.which("selrel")
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from selrel_jax.cli import main; sys.exit(main())"]


def time_command(argv: tuple[str, ...], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` fresh ``selrel ARGV`` processes."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*_selrel(), *argv], capture_output=True, check=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    time_command(("--help",), 1)  # warm the file cache: the first run reads every .pyc
    for argv in COMMAND_LINES:
        seconds = time_command(argv, args.repeats)
        print(
            f"selrel {' '.join(argv):<24} median {statistics.median(seconds):.3f} s "
            f"(min {min(seconds):.3f}, max {max(seconds):.3f}, {args.repeats} runs)"
        )


if __name__ == "__main__":
    main()
