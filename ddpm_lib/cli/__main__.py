"""``python -m ddpm_lib.cli``: the ``ddpm-lib`` command line."""

import sys

from ddpm_lib.cli import main

sys.exit(main())
