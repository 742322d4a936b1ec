import sys

from ehrfm.cli import main

sys.exit(main())
