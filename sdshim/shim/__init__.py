"""The per-container monitor: main process of sdshim-NAME.service. Standard library only."""
