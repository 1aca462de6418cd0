"""Command-line entry points: ``hive-c0re`` and ``hivectl``."""
