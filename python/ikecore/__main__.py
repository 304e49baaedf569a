"""``python -m ikecore`` runs the command line."""

from ikecore.cli import main

raise SystemExit(main())
