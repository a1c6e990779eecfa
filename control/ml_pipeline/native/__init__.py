"""The hot path from Python: compiled models and the serving core (Cython over libvoxguard, built by setup.py).

`CompiledModel` loads a verified TL2cgen library and scores rows; `ServingCore` serves models in champion and
challenger slots, one native call per request. The native gRPC transport, where built, is
`ml_pipeline.native.native_transport.NativeTransport`.
"""

from ml_pipeline.native.compiled_model import CompiledModel, ModelIntegrityError, ModelLoadError
from ml_pipeline.native.serving_core import ServingCore, ServingError

__all__ = ["CompiledModel", "ModelIntegrityError", "ModelLoadError", "ServingCore", "ServingError"]
