"""Typed gRPC client of the cell coordinator (generated code in ``generated/``)."""
