"""VoxGuard ML pipeline: the Python control plane around a native-compiled fraud-scoring hot path."""

__version__ = "0.1.0"
