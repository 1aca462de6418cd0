"""hivecore: the hyperhive host daemon (hive-c0re) on trio."""

__version__ = "0.1.0"
