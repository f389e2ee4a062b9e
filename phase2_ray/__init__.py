"""phase2_ray: proves on Ray whether a model-optimization stack is ready for production."""

__version__ = "0.1.0"
