"""Thin Hydra entry points that turn a config into calls of the ``prolora`` library and ``eval``.

``train.py``/``recipes/train.py`` (one training run), ``recipes/evaluate.py`` (one evaluation),
``recipes/reproduce.py`` (a paper grid, built on :mod:`recipes.paper`), ``recipes/schema.py`` (the Hydra schema
of training).
"""

import functools
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")


def git_commit() -> str | None:
    """The harness's commit for result files: ``<sha>``, ``<sha>-dirty`` with uncommitted tracked changes,
    or None outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, ``warning: <text>`` (the source line Python adds says nothing to a user)."""
    return f"warning: {' '.join(str(message).split())}\n"


def one_line_errors(main):
    """Wrap a recipe's ``main``: a bad setting or a file problem (``ValueError``; ``OSError``: a missing file, a
    read-only or full disk) ends the run with ONE line that names it and exit status 2, not a traceback
    (``HYDRA_FULL_ERROR=1`` shows it all); a warning is one line too."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        warnings.formatwarning = one_line_warning
        try:
            return main(*args, **kwargs)
        except (ValueError, OSError) as e:  # OSError: FileNotFoundError, a read-only or full disk, ...
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped
