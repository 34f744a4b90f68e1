"""``python -m cluster.cli`` runs ``pmkt``."""

from cluster.cli import main

raise SystemExit(main())
