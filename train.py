"""The command users type: ``python train.py method=prolora rank=8 unshared=1 [sharing=7] ...``.

Forwards to ``recipes/train.py`` (the training recipe). ``--cfg job`` prints the composed config with the
shorthands resolved (``--resolve`` is implied for the job config) so ``rank=8`` shows up as ``method.r: 8``.
"""

import sys

from recipes.train import main


def _shows_job_config(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg in ("--cfg", "-c") and i + 1 < len(argv) and argv[i + 1] == "job":
            return True
        if arg == "--cfg=job":
            return True
    return False


if __name__ == "__main__":
    if _shows_job_config(sys.argv[1:]) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")
    main()
