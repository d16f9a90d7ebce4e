"""``python -m restygate.testing.consul``: run the Consul test server (see `cli`)."""

import sys

from .cli import main

sys.exit(main())
