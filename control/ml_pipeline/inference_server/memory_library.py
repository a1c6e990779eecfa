"""Hand the model loader a compiled library that exists only in memory: bytes fetched from a database registry.

The bytes go into an anonymous memory file (memfd) and the loader reads them through `/proc/self/fd/N`; it hashes
that very content while copying it into its own executable memfd (CompiledModel), so a server needs no shared
filesystem and no file on disk that another user could change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def memory_library(data: bytes, name: str = "vg_registry_library") -> Iterator[str]:
    """A path (valid inside the block) whose content is `data`, held in a memfd closed when the block ends."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
