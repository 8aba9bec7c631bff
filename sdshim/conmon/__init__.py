"""sdshim as podman's conmon: conmon 2.1.6's command line, pipes and files, with each
container's monitor the main process of a transient systemd service.

One concern per module: options (the command line), launcher (the process podman
starts), handover (its file descriptors to the monitor), unit (the service), interpreter
(the `conmon`-named python the monitor runs as), syncpipe, exitfile, logsinks, attach,
ctl, and monitor (the long-lived process). docs/conmon.md has the design.
"""
