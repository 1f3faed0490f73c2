"""``python -m ddpm_lib.cli``: the ``ddpm-lib`` command line."""

import sys

from ddpm_lib.cli import main

# importing this module (the wheel's smoke test imports every module) must run nothing
if __name__ == "__main__":
    sys.exit(main())
