"""The per-container monitor: main process of sdshim-NAME.service. Standard library only.

systemd runs this file as `python3 -I -S .../sdshim/shim/__main__.py` (see
sdshim.units.spec.monitor_command): without site, the directory that holds the sdshim
package is not on sys.path, so put it there -- after the standard library, so that
nothing installed beside sdshim can shadow a standard module. `python3 -m sdshim.shim`
works as well.
"""

import os
import sys

if not __package__:
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sdshim.shim.monitor import main

sys.exit(main())
