"""The per-container monitor: main process of sdshim-NAME.service. Standard library only.

systemd runs this file as `python3 -I -S .../sdshim/shim/__main__.py` (see
sdshim.units.spec.monitor_command): without site, the directory that holds the sdshim
package is not on sys.path, so put it there -- after the standard library, so that
nothing installed beside sdshim can shadow a standard module. `python3 -m sdshim.shim`
works as well. sdshim.shim.entry picks the program; this file stays this short
because a script, unlike a module, is compiled at every start.
"""

import posix
import sys

if not __package__:
    here = __file__ if __file__.startswith("/") else f"{posix.getcwd()}/{__file__}"
    sys.path.append(here.rsplit("/", 3)[0])  # <dir>/sdshim/shim/__main__.py

from sdshim.shim.entry import main

sys.exit(main(sys.argv[1:]))
