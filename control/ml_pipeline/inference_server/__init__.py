"""The gRPC inference server: grpcio in front of the native serving core, converging to the model registry."""

from ml_pipeline.inference_server.server import InferenceServer

__all__ = ["InferenceServer"]
