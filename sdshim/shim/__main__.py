"""The per-container monitor: main process of sdshim-NAME.service. Standard library only.

systemd runs this file as `python3 -I -S .../sdshim/shim/__main__.py` (see
sdshim.units.spec.monitor_command): without site, the directory that holds the sdshim
package is not on sys.path, so put it there -- after the standard library, so that
nothing installed beside sdshim can shadow a standard module. `python3 -m sdshim.shim`
works as well.

Here is where it is decided which program runs: a container's lifecycle
(sdshim.shim.container) or, with --exec-id, an exec'd process's
(sdshim.shim.execprocess); with `--supervisor systemd` no monitor but the hand-off that
makes the container the unit's main process (sdshim.shim.handoff); with `--stop-post`
that unit's ExecStopPost= step (sdshim.shim.stoppost). Only that one is loaded.
"""

import posix  # not os: see sdshim.leanos
import sys

if not __package__:
    here = __file__ if __file__.startswith("/") else f"{posix.getcwd()}/{__file__}"
    sys.path.append(here.rsplit("/", 3)[0])  # <dir>/sdshim/shim/__main__.py

if sys.argv[1:2] == ["reload"]:  # ExecReload= (see sdshim.shim.reload)
    from sdshim.shim.reload import main as reload

    sys.exit(reload(sys.argv[2:]))

argv = sys.argv[1:]
if "--stop-post" in argv:
    from sdshim.shim import stoppost

    sys.exit(stoppost.main(argv))
# A cheap look first: the monitor's path must not pay for options.parse twice.
if "systemd" in argv or "--supervisor=systemd" in argv:
    from sdshim.shim import handoff, options

    handoff_opts = options.parse(argv)
    if handoff_opts.supervisor == "systemd":
        sys.exit(handoff.main(handoff_opts))

from sdshim.shim import monitor  # noqa: E402  (after the two programs above)

monitor.catch_early_signals()
opts = monitor.parse_args(argv)
if opts.exec_id:  # the monitor of an `sdshim exec` process
    from sdshim.shim.execprocess import ExecLifecycle

    life: "monitor.Lifecycle" = ExecLifecycle(
        opts.name, opts.exec_id, start=opts.start, timeout=opts.timeout,
        stop_signal=opts.stop_signal, stop_timeout=opts.stop_timeout)
else:
    from sdshim.shim.container import ContainerLifecycle
    from sdshim.shim.runtime import places_processes

    life = ContainerLifecycle(
        opts.name, start=opts.start, run_detached=places_processes(opts.runtime),
        restart=opts.restart, stop_signal=opts.stop_signal, stop_timeout=opts.stop_timeout,
        watchdog=b"WATCHDOG_USEC" in posix.environ,
        ready_by_monitor=opts.sdnotify == "monitor", ready_timeout=opts.ready_timeout)
sys.exit(monitor.main(opts, life))
