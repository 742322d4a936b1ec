import sys

from ehrfm.app.cli import main

sys.exit(main())
