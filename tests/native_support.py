"""When a test that needs the native gRPC transport may skip: only on a machine without gRPC C++.

The native transport is required wherever the build must have produced it: where gRPC C++ is installed (the
rule of setup.py's grpc_available(): `protoc`, `grpc_cpp_plugin` and `pkg-config` on PATH and
`pkg-config --exists grpc++ protobuf` succeeding) and in CI (CI=true). There a missing extension fails the test;
elsewhere the test skips with the reason. Used by the tests and by bench/.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
from types import ModuleType

import pytest

from ml_pipeline.inference_server.transport import native_unavailable_reason

NATIVE_TRANSPORT = "ml_pipeline.native.native_transport"


@functools.cache
def grpc_cpp_installed() -> bool:
    """Whether gRPC C++, protobuf, protoc and grpc_cpp_plugin are installed (setup.py's grpc_available())."""
    if not all(shutil.which(tool) for tool in ("pkg-config", "protoc", "grpc_cpp_plugin")):
        return False
    return subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], check=False).returncode == 0


def native_transport_required() -> bool:
    """True where the native transport must be built: gRPC C++ is installed, or this is CI."""
    return bool(os.environ.get("CI")) or grpc_cpp_installed()


def require(reason: str) -> None:
    """A component the test needs is missing (`reason`): fail where the native transport is required, else skip."""
    if native_transport_required():
        why = "CI=true" if os.environ.get("CI") else "gRPC C++ is installed"
        pytest.fail(f"{reason} (required here: {why})", pytrace=False)
    pytest.skip(reason)


def require_native_transport() -> ModuleType:
    """The native transport extension module; fails or skips the calling test (see `require`) when it is not built."""
    reason = native_unavailable_reason()
    if reason is not None:
        require(reason)
    return importlib.import_module(NATIVE_TRANSPORT)
