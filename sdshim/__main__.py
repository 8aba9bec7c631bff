import sys

from sdshim.units.cli import main

sys.exit(main())
