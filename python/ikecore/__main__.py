"""``python -m ikecore`` runs the command line."""

from ikecore.entry import main

raise SystemExit(main())
