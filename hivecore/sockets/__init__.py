"""The daemon's JSON-lines Unix sockets: framing, the one server, the one client, host.sock.

Nothing is imported here, so ``hivecore.sockets.client`` stays light for the CLIs.
"""
