"""Benchmarks: sdshim against conmon, podman and the bare runtime (`python3 -m bench.run`)."""
