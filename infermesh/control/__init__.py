"""The cell's control plane: the coordinator service and the state store behind it."""
