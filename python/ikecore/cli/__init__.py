"""The ikecore command: serve, connect, decode, demo, and the entry point."""
