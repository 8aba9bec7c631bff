import sys

from sdshim.shim.monitor import main

sys.exit(main())
