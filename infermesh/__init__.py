"""InferMesh: training-first orchestration for PyTorch.

Importing :mod:`infermesh` is cheap (it does not import torch); subsystems are imported
where they are used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
