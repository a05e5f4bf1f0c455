"""`python -m sim` is the same as the `moesim` console script."""

from sim.cli import main

raise SystemExit(main())
