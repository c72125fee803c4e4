"""`python -m peer`: the crdtledger command line, without the installed script."""

from peer.cli import main

raise SystemExit(main())
