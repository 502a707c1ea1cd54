"""The command users type: ``python train.py method=prolora rank=8 unshared=1 [sharing=7] ...``.

Forwards to ``recipes/train.py`` (the training recipe). ``--cfg job`` prints the composed config with the
shorthands resolved (``--resolve`` is implied) so ``rank=8`` shows up as ``method.r: 8``.
"""

import sys

from recipes.train import main

if __name__ == "__main__":
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv[1:]) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")
    main()
