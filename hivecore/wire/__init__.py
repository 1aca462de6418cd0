"""Wire shapes (host.sock, dashboard events, helper events) and the one converter."""

from hivecore.wire.converter import converter, describe_error, dumps, loads

__all__ = ["converter", "describe_error", "dumps", "loads"]
