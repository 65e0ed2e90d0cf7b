"""Model definitions shared by training examples and the model server (import only torch)."""
