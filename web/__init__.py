"""The dashboard: a Quart-trio app served by hypercorn."""
