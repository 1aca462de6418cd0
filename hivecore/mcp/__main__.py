"""``python -m hivecore.mcp``: the same as ``hive-mcp``."""

import sys

from hivecore.mcp.server import main

sys.exit(main())
