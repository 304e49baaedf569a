"""``python -m ikecore`` runs the command line."""

from ikecore.cli.entry import main

raise SystemExit(main())
