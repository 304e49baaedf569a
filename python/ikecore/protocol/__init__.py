"""One SA's exchanges and their helpers: Main Mode, Aggressive Mode, Quick Mode, Informational (sans-IO)."""
