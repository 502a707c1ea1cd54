"""The command users type: ``python train.py method=prolora rank=8 unshared=1 [sharing=7] ...``.

Runs the training recipe (:mod:`recipes.train`).  ``--cfg job`` prints the composed config, resolved
(``rank=8`` shows as ``method.r: 8``) and annotated with each field's help, after checking its values (files are
checked when training starts); a bad value ends in one line and exit status 2.  ``--help`` lists every field.
A run directory that cannot be written (a read-only disk) is named in one line before Hydra touches it.
"""

import sys

from recipes.train import check_run_dir, job_config_overrides, main, show_job_config

if __name__ == "__main__":
    overrides = job_config_overrides(sys.argv[1:])
    if overrides is not None:
        sys.exit(show_job_config(overrides))
    if check_run_dir(sys.argv[1:]):
        sys.exit(2)
    main()
