"""The child side's command line (see the package docstring): run as a *file*, never with ``-m``.

``python -I`` (3.11+: it implies ``-P``) puts neither this file's directory, nor the working directory, nor
PYTHONPATH on ``sys.path``, so this file imports its package itself: it puts the directory that holds the
package (``<run>/lib``, which the harness makes listable, as the import system needs, for the box's
unprivileged uid as well) first on ``sys.path``, imports the package under the name of its directory, and
takes the entry off ``sys.path`` again before anything runs: the untrusted program gets the interpreter's
own ``sys.path``.
"""

import os
import sys


def _module(name: str):
    here = os.path.dirname(os.path.abspath(__file__))
    parent, package = os.path.split(here)
    sys.path.insert(0, parent)
    try:
        qualified = f"{package}.{name}"
        __import__(qualified)
        return sys.modules[qualified]
    finally:
        sys.path.remove(parent)


def main(argv: list) -> None:
    mode = argv[1]
    if mode == "launch":
        _module("supervisor").launch(argv[2])
    elif mode == "guard":
        _module("guard").guard(argv[2])
    elif mode == "kill":
        _module("supervisor").kill_uid(argv[2])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
