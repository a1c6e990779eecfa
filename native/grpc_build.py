"""Build description of the native gRPC transport (issue 6), used by setup.py.

The extension is built only where pkg-config finds Debian's gRPC C++ library (`grpc++`, `protobuf`) and
protoc with the gRPC C++ plugin is installed (scripts/install_native_deps.sh installs them); elsewhere the
project builds without it and serves with grpcio. protoc generates C++ code into build/native_gen/: from
proto/fraud_detection.proto the raw-bytes FraudDetection service and the message descriptors that server
reflection describes, and from proto/grpc/health/v1/health.proto the health messages (for reflection too).
The serving core's C sources are compiled in as well; the core itself is shared at run time with the
ServingCore extension through its "voxguard.vg_core" capsule (both are built from the same sources).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Extension

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "proto"
PROTO = PROTOS / "fraud_detection.proto"
HEALTH_PROTO = PROTOS / "grpc" / "health" / "v1" / "health.proto"
GENERATED = ROOT / "build" / "native_gen"


def _pkg_config(*args: str) -> list[str]:
    return subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout.split()


def grpc_available() -> bool:
    """Whether gRPC C++, protobuf, protoc and grpc_cpp_plugin are all installed."""
    if shutil.which("pkg-config") is None or shutil.which("protoc") is None or shutil.which("grpc_cpp_plugin") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], check=False).returncode == 0


def _protoc(proto: Path, outputs: list[Path], *flags: str) -> list[str]:
    """Run protoc on `proto` when it is newer than its generated `outputs`; return their paths.

    Two steps: a descriptor set first (protoc records each field's JSON name there), then C++ from that set, so
    the descriptors compiled in carry the JSON names and reflection clients (grpcurl) print camelCase names
    exactly as with the grpcio transport's reflection."""
    if not all(o.exists() and o.stat().st_mtime >= proto.stat().st_mtime for o in outputs):
        GENERATED.mkdir(parents=True, exist_ok=True)
        name = str(proto.relative_to(PROTOS))
        descriptors = GENERATED / (proto.stem + ".desc")
        subprocess.run(["protoc", f"-I{PROTOS}", f"--descriptor_set_out={descriptors}", name], check=True, cwd=PROTOS)
        subprocess.run(
            ["protoc", f"--descriptor_set_in={descriptors}", f"--cpp_out={GENERATED}", *flags, name], check=True
        )
    return [str(o.relative_to(ROOT)) for o in outputs]


def _generate() -> list[str]:
    """C++ sources: FraudDetection messages + gRPC service, and the health messages (for reflection only)."""
    plugin = f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}"
    service = [GENERATED / "fraud_detection.pb.cc", GENERATED / "fraud_detection.grpc.pb.cc"]
    health = [GENERATED / "grpc" / "health" / "v1" / "health.pb.cc"]
    return _protoc(PROTO, service, f"--grpc_out={GENERATED}", plugin) + _protoc(HEALTH_PROTO, health)


def grpc_transport_extensions(compile_args: list[str]) -> list[Extension]:
    """[the ml_pipeline.native.native_transport extension] when gRPC C++ is installed, else []."""
    if not grpc_available():
        return []
    cflags = _pkg_config("--cflags", "grpc++", "protobuf")
    libs = _pkg_config("--libs", "grpc++", "protobuf")
    sources = ["native_transport.pyx", "grpc_transport.cc", "vg_core.c", "vg_wire.c", "vg_model.c"]
    return [
        Extension(
            "ml_pipeline.native.native_transport",
            [f"native/{s}" for s in sources] + _generate(),
            include_dirs=["native", str(GENERATED.relative_to(ROOT))],
            language="c++",
            extra_compile_args=compile_args + cflags,
            extra_link_args=libs + ["-lgrpc++_reflection"],
            libraries=["dl", "z", "pthread"],
            depends=[str(h.relative_to(ROOT)) for h in sorted((ROOT / "native").glob("*.h"))],
        )
    ]
