"""The manager side: container specs, the systemd D-Bus client, the API and the CLI."""
