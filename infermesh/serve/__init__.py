"""Serving: router/ingress, routing strategies and the checkpoint model server (floor 3)."""
