"""Actors: trio tasks that each own one concern's state and are driven through a handle."""
