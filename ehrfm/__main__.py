"""`python -m ehrfm`: the `ehrfm` command line (ehrfm.app.cli.main)."""

import sys

from ehrfm.app.cli import main

sys.exit(main())
