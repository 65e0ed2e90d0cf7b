"""Shared value types, configuration helpers, errors and the clock (floor 1)."""
