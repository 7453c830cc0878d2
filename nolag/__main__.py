"""`python -m nolag`: the same as the `nolag` console script."""

import sys

from nolag.cli import main

sys.exit(main())
