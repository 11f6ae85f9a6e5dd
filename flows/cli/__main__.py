"""``python -m flows.cli ARGS`` is ``fraud ARGS`` (for a checkout without the console script)."""

from flows.cli.main import main

raise SystemExit(main())
