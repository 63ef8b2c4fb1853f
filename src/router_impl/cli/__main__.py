"""Entry for `python -m router_impl.cli`: runs the `router` command."""

import sys

from router_impl.cli.commands import main

sys.exit(main())
