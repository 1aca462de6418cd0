"""The hive's tools over MCP: :mod:`hivecore.mcp.tools` (generated from the verb table) and
:mod:`hivecore.mcp.server` (``hive-mcp``, ``python -m hivecore.mcp``). Operators: ``docs/agents.md``."""
