"""sdshim: OCI containers as transient systemd services."""

__version__ = "0.1.0"
