"""Which program a monitor process runs, from its arguments (sdshim.shim.__main__).

A container's lifecycle (sdshim.shim.container) or, with --exec-id, an exec'd
process's (sdshim.shim.execprocess); with `--supervisor systemd` no monitor but the
hand-off that makes the container the unit's main process (sdshim.shim.handoff); with
`--stop-post` that unit's ExecStopPost= step (sdshim.shim.stoppost); `reload`, the
ExecReload= step (sdshim.shim.reload). Only that one is loaded.

Here and not in __main__.py because a script is compiled from source at every start,
which leaves the compiler's memory dirty in every monitor; a module comes from its .pyc.
"""

import posix  # not os: see sdshim.leanos


def main(argv: list[str]) -> int:
    if argv[:1] == ["reload"]:  # ExecReload= (see sdshim.shim.reload)
        from sdshim.shim.reload import main as reload

        return reload(argv[1:])
    if "--stop-post" in argv:
        from sdshim.shim import stoppost

        return stoppost.main(argv)
    # A cheap look first: the monitor's path must not pay for options.parse twice.
    if "systemd" in argv or "--supervisor=systemd" in argv:
        from sdshim.shim import handoff, options

        handoff_opts = options.parse(argv)
        if handoff_opts.supervisor == "systemd":
            return handoff.main(handoff_opts)

    from sdshim.shim import monitor

    monitor.catch_early_signals()
    opts = monitor.parse_args(argv)
    life: monitor.Lifecycle
    if opts.exec_id:  # the monitor of an `sdshim exec` process
        from sdshim.shim.execprocess import ExecLifecycle

        life = ExecLifecycle(
            opts.name, opts.exec_id, start=opts.start, timeout=opts.timeout,
            stop_signal=opts.stop_signal, stop_timeout=opts.stop_timeout)
    else:
        from sdshim.shim.container import ContainerLifecycle
        from sdshim.shim.runtime import places_processes

        life = ContainerLifecycle(
            opts.name, start=opts.start, run_detached=places_processes(opts.runtime),
            restart=opts.restart, stop_signal=opts.stop_signal,
            stop_timeout=opts.stop_timeout, watchdog=b"WATCHDOG_USEC" in posix.environ,
            ready_by_monitor=opts.sdnotify == "monitor", ready_timeout=opts.ready_timeout)
    return monitor.main(opts, life)
