"""Build the Cython/C extensions of the hot path; metadata lives in pyproject.toml.

Sources are in native/; each extension is built as ml_pipeline.native.<name>, so an editable
install places the compiled modules inside control/native/ (see DESIGN.md).
"""

import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "native"))
from grpc_build import grpc_transport_extensions  # noqa: E402 (native/grpc_build.py)

COMPILE_ARGS = ["-O3", "-fno-strict-aliasing"]


def native_extension(name: str, sources: list[str], **kwargs) -> Extension:
    """One extension module ml_pipeline.native.<name> built from files under native/."""
    return Extension(
        f"ml_pipeline.native.{name}",
        [f"native/{s}" for s in sources],
        include_dirs=["native", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=COMPILE_ARGS + kwargs.pop("extra_compile_args", []),
        **kwargs,
    )


EXTENSIONS: list[Extension] = [
    native_extension("compiled_model", ["compiled_model.pyx", "vg_model.c"], libraries=["dl", "pthread"]),
    native_extension("serving_core", ["serving_core.pyx", "vg_core.c", "vg_wire.c", "vg_model.c"], libraries=["dl", "z"]),
    *grpc_transport_extensions(COMPILE_ARGS),
]

setup(
    package_dir={"ml_pipeline": "control"},
    packages=["ml_pipeline"] + [f"ml_pipeline.{p}" for p in find_packages("control")],
    package_data={"ml_pipeline": ["data/*.sql", "proto_gen/*.proto"]},
    ext_modules=cythonize(
        EXTENSIONS,
        build_dir="build/cython",
        language_level=3,
        compiler_directives={"embedsignature": True},
    ),
)
