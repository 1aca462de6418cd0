"""Wire shapes (host.sock, dashboard events, helper events) and the one converter.

Import the modules themselves (``hivecore.wire.converter``, ``hivecore.wire.host`` …); this package
imports nothing, so :mod:`hivecore.wire.lines` stays light for the CLIs.
"""
