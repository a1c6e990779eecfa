"""Build the native layer; the project's metadata lives in pyproject.toml.

Three things are built, in this order, by `build_ext` (so `pip install -e .` alone gives a working tree):

1. the Python messages of the wire contract (`*_pb2.py` and `.pyi`) into `ml_pipeline/proto_gen/`;
2. `libvoxguard.so`, the C serving core (native/src, public headers in native/include), and, where gRPC C++ is
   installed, `libvoxguard_grpc.so`, the C++ transport (native/transport), both into `ml_pipeline/native/`;
   every `vg_*` function is defined in libvoxguard alone and every other symbol of both libraries is hidden;
3. the Cython extensions of `ml_pipeline.native`, which link those libraries (rpath `$ORIGIN`) and pass
   typed objects to each other by `cimport`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "native"
PROTOS = ROOT / "proto"
PROTO = PROTOS / "fraud_detection.proto"
INFERENCE_PROTO = PROTOS / "grpc_predict_v2.proto"  # the Open Inference Protocol (KServe V2)
HEALTH_PROTO = PROTOS / "grpc" / "health" / "v1" / "health.proto"
GENERATED = ROOT / "build" / "native_gen"
INCLUDE = "native/include"

OPTIMIZE = ["-O3", "-fno-strict-aliasing", "-fPIC"]
# Our own C/C++ sources build warning-free; generated code (Cython, protoc) gets OPTIMIZE only.
STRICT = ["-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
CORE_SOURCES = sorted(str(p.relative_to(ROOT)) for p in (NATIVE / "src").glob("*.c"))
CORE_LIBS = ["dl", "z", "pthread", "m"]


def _pkg_config(*args: str) -> list[str]:
    return subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout.split()


def grpc_available() -> bool:
    """Whether gRPC C++, protobuf, protoc and grpc_cpp_plugin are all installed (for the native transport)."""
    if not all(shutil.which(tool) for tool in ("pkg-config", "protoc", "grpc_cpp_plugin")):
        return False
    return subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], check=False).returncode == 0


def _protoc_cpp(proto: Path, outputs: list[Path], *flags: str) -> list[str]:
    """C++ code of `proto` into build/native_gen (when older than the .proto); returns the generated sources.

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


def _transport_generated_sources() -> list[str]:
    """FraudDetection and GRPCInferenceService messages + gRPC services, and the health messages (described by
    server reflection)."""
    plugin = f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}"
    sources = []
    for proto in (PROTO, INFERENCE_PROTO):
        service = [GENERATED / f"{proto.stem}.pb.cc", GENERATED / f"{proto.stem}.grpc.pb.cc"]
        sources += _protoc_cpp(proto, service, f"--grpc_out={GENERATED}", plugin)
    health = [GENERATED / "grpc" / "health" / "v1" / "health.pb.cc"]
    return sources + _protoc_cpp(HEALTH_PROTO, health)


class BuildNative(build_ext):
    """build_ext that first generates the Python messages and builds the native libraries the extensions link."""

    built: list[Path]

    def finalize_options(self) -> None:
        """Compile on every CPU unless `-j N` says otherwise (pip and the image build pass no -j)."""
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        self._generate_python_messages()
        self.built = []
        super().run()
        if self.inplace:
            package_dir = Path(self.get_finalized_command("build_py").get_package_dir("ml_pipeline.native"))
            for library in self.built:
                self.copy_file(str(library), str(package_dir / library.name))

    def build_extensions(self) -> None:
        """The libraries first (self.compiler exists from here on), then the extensions that link them."""
        native_dir = Path(self.build_lib) / "ml_pipeline" / "native"
        native_dir.mkdir(parents=True, exist_ok=True)
        self.built = [self._shared_library("voxguard", CORE_SOURCES, native_dir, "c")]
        if self.with_transport:
            self.built.append(self._transport_library(native_dir))
        for ext in self.extensions:
            ext.library_dirs.append(str(native_dir))
        super().build_extensions()

    @property
    def with_transport(self) -> bool:
        return any(ext.name.endswith(".native_transport") for ext in self.extensions)

    def _generate_python_messages(self) -> None:
        """<name>_pb2.py/.pyi of each .proto and the .proto itself (package data, for clients) into proto_gen/."""
        if self.inplace:
            out = Path(self.get_finalized_command("build_py").get_package_dir("ml_pipeline.proto_gen"))
        else:
            out = Path(self.build_lib) / "ml_pipeline" / "proto_gen"
        out.mkdir(parents=True, exist_ok=True)
        for proto in (PROTO, INFERENCE_PROTO):
            target = out / f"{proto.stem}_pb2.py"
            if target.exists() and target.stat().st_mtime >= proto.stat().st_mtime and (out / proto.name).exists():
                continue
            args = [f"-I{PROTOS}", f"--python_out={out}", f"--pyi_out={out}", str(proto)]
            subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], check=True)
            shutil.copyfile(proto, out / proto.name)

    def _shared_library(
        self,
        name: str,
        sources: list[str],
        out_dir: Path,
        lang: str,
        *,
        extra: list[str] | None = None,
        libraries: list[str] | None = None,
        link_args: list[str] | None = None,
        generated: list[str] | None = None,
    ) -> Path:
        """Compile `sources` (STRICT) and `generated` (not strict) and link them into out_dir/lib<name>.so."""
        standard = ["-std=gnu11"] if lang == "c" else ["-std=c++17"]
        flags = OPTIMIZE + standard + (extra or [])
        strict = {
            "include_dirs": [INCLUDE, str(NATIVE / "src")],
            "extra_postargs": flags + STRICT,
            "depends": self._headers(),
        }
        loose = {"include_dirs": [INCLUDE, str(GENERATED)], "extra_postargs": flags + ["-fvisibility=hidden", "-w"]}
        objects = self._compile([(source, strict) for source in sources] + [(g, loose) for g in generated or []])
        target = out_dir / f"lib{name}.so"
        self.compiler.link_shared_object(
            objects,
            str(target),
            libraries=libraries or CORE_LIBS,
            library_dirs=[str(out_dir)],
            extra_postargs=(link_args or []) + ["-Wl,-rpath,$ORIGIN", "-Wl,--no-undefined"],
            target_lang="c++" if lang == "c++" else "c",
        )
        return target

    def _compile(self, jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The objects of (source, compile options) `jobs`, one compiler process per source, `self.parallel` at a
        time, in the order of `jobs`."""

        def compile_one(job: tuple[str, dict[str, Any]]) -> list[str]:
            source, options = job
            return self.compiler.compile([source], output_dir=self.build_temp, **options)

        with ThreadPoolExecutor(int(self.parallel)) as pool:
            return [obj for batch in pool.map(compile_one, jobs) for obj in batch]

    def _transport_library(self, out_dir: Path) -> Path:
        """libvoxguard_grpc.so: the C++ gRPC server over the core (links libvoxguard and gRPC C++)."""
        cflags = _pkg_config("--cflags", "grpc++", "protobuf")
        libs = _pkg_config("--libs", "grpc++", "protobuf")
        return self._shared_library(
            "voxguard_grpc",
            ["native/transport/grpc_transport.cc"],
            out_dir,
            "c++",
            extra=cflags + [f"-I{GENERATED}"],
            libraries=["voxguard", "stdc++"],
            link_args=libs + ["-lgrpc++_reflection"],
            generated=_transport_generated_sources(),
        )

    @staticmethod
    def _headers() -> list[str]:
        return [str(p.relative_to(ROOT)) for p in sorted(NATIVE.rglob("*.h"))]


def extension(name: str, *, libraries: list[str], language: str = "c") -> Extension:
    """The extension ml_pipeline.native.<name> from control/ml_pipeline/native/<name>.pyx."""
    return Extension(
        f"ml_pipeline.native.{name}",
        [f"control/ml_pipeline/native/{name}.pyx"],
        include_dirs=[INCLUDE, "native/transport", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=OPTIMIZE + ["-fvisibility=hidden"],
        extra_link_args=["-Wl,-rpath,$ORIGIN"],
        libraries=libraries,
        language=language,
    )


EXTENSIONS = [
    extension("compiled_model", libraries=["voxguard"]),
    extension("serving_core", libraries=["voxguard"]),
    extension("tree_explainer", libraries=["voxguard"]),
]
if grpc_available():
    EXTENSIONS.append(extension("native_transport", libraries=["voxguard_grpc", "voxguard"], language="c++"))

setup(
    package_dir={"": "control"},
    packages=find_packages("control"),
    package_data={
        "ml_pipeline": ["py.typed", "data/*.sql", "proto_gen/*.proto", "proto_gen/*.pyi", "native/*.pyi"],
        "ml_pipeline.native": ["*.pxd", "*.pyi"],
    },
    ext_modules=cythonize(
        EXTENSIONS,
        build_dir="build/cython",
        include_path=["control"],
        language_level=3,
        compiler_directives={"embedsignature": True},
        nthreads=os.cpu_count() or 1,
    ),
    cmdclass={"build_ext": BuildNative},
)
