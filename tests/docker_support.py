"""A private Docker engine for the image tests: Debian's dockerd started as root on its own socket and data
folder (no bridge network, no iptables: containers share the host's network and listen on 127.0.0.1), and a
Python base image made from Debian packages with debootstrap, since no image registry is reachable here.

Everything lives under ~/.cache/voxguard/container (XDG_CACHE_HOME is honoured): the engine's images and build
cache survive between runs, so a second run rebuilds nothing that did not change. Where the engine cannot run
the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxguard" / "container"
BASE_IMAGE = "voxguard-base"
# Certificate authorities this machine adds to Debian's (e.g. a proxy's on the way to PyPI): the base trusts
# them too, so pip inside the build reaches what pip on the host reaches.
HOST_CAS = Path("/usr/local/share/ca-certificates")
# What the Dockerfile's stages need from the base: python3 with venv and pip, and CA certificates for pip.
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def require(reason: str) -> None:
    """The engine cannot run here (`reason`): fail in CI, where the image must be proven, else skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


def docker_client() -> str | None:
    """The docker client of Debian's docker.io, beside its dockerd: a client of the same release speaks the
    engine's API and drives its built-in BuildKit (newer clients want the buildx plugin for that)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None
    beside = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    return str(beside) if beside.is_file() else shutil.which("docker")


@dataclass(frozen=True)
class Engine:
    """A running dockerd and the client command that talks to it."""

    client: str
    socket: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment for the client: this engine's socket, BuildKit on."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine; output captured, failure raised with the output when `check`."""
        result = subprocess.run(
            [self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        return result

    def image_size(self, image: str) -> int:
        """The image's size in bytes (all its layers), as `docker images` reports it."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def docker_engine() -> Iterator[Engine]:
    """A dockerd of our own for a with-block: `--bridge=none --iptables=false`, data, state and socket under
    CACHE; stopped (SIGTERM, then waited for) when the block ends."""
    if os.geteuid() != 0:
        require("the Docker engine runs as root only")
    dockerd, client = shutil.which("dockerd"), docker_client()
    if dockerd is None or client is None:
        require("no dockerd (scripts/install_container_tools.sh installs Debian's docker.io)")
    assert dockerd is not None and client is not None
    CACHE.mkdir(parents=True, exist_ok=True)
    socket, pidfile = CACHE / "docker.sock", CACHE / "docker.pid"
    if pidfile.exists():
        stale = int(pidfile.read_text().strip() or 0)
        if stale and _alive(stale):
            require(f"another run's dockerd (pid {stale}) holds {CACHE}")
        pidfile.unlink()
    log = (CACHE / "dockerd.log").open("w")
    command = [
        dockerd,
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        f"--data-root={CACHE / 'data'}",
        f"--exec-root={CACHE / 'run'}",
        f"--pidfile={pidfile}",
        f"--host=unix://{socket}",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(client, socket)
    try:
        deadline = time.monotonic() + 60
        while engine.run("version", timeout=30, check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (CACHE / "dockerd.log").read_text()[-3000:]
                require(f"dockerd did not start:\n{tail}")
            time.sleep(0.3)
        yield engine
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


# The settings Debian's own container images carry (debian:bookworm-slim): apt keeps no downloaded packages,
# dpkg installs no documentation, manual pages or translations. Without them every apt-get layer of the
# Dockerfile would keep its .deb files and docs.
APT_CLEAN = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT::Keep-Downloaded-Packages "false";
"""
DPKG_EXCLUDES = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def _slim(rootfs: Path) -> None:
    """Make a debootstrap tree a container base: the slim images' apt and dpkg settings, and without what
    those settings leave out (package lists, downloaded packages, docs, manual pages, translations)."""
    (rootfs / "etc" / "apt" / "apt.conf.d" / "docker-clean").write_text(APT_CLEAN)
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "docker").write_text(DPKG_EXCLUDES)
    leave_out = ["var/lib/apt/lists/*", "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"]
    leave_out += ["usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "usr/share/doc/*/*"]
    for pattern in leave_out:
        for path in rootfs.glob(pattern):
            if path.name in ("copyright", "locale.alias", "lock", "partial", "auxfiles"):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _host_cas() -> list[Path]:
    return sorted(HOST_CAS.glob("**/*.crt")) if HOST_CAS.is_dir() else []


def base_image(engine: Engine) -> str:
    """The base image: Debian bookworm minbase with python3, venv and pip (debootstrap), slimmed, plus this
    machine's added certificate authorities; tagged by its recipe, so a changed recipe or trust store makes a
    new base.

    The debootstrap tree is kept as a tarball in CACHE and the image in the engine: debootstrap runs once."""
    recipe = [BASE_PACKAGES.encode(), APT_CLEAN.encode(), DPKG_EXCLUDES.encode()]
    recipe += [p.name.encode() + p.read_bytes() for p in _host_cas()]
    digest = hashlib.sha256(b"\0".join(recipe)).hexdigest()[:12]
    image = f"{BASE_IMAGE}:bookworm-{digest}"
    if engine.run("image", "inspect", image, check=False).returncode == 0:
        return image
    tarball = CACHE / "bookworm-python3-slim-rootfs.tar"
    if not tarball.exists():
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            require("no debootstrap (scripts/install_container_tools.sh installs it)")
        assert debootstrap is not None
        rootfs = CACHE / "rootfs.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        _slim(rootfs)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    plain = f"{BASE_IMAGE}:bookworm-debootstrap"
    if engine.run("image", "inspect", plain, check=False).returncode != 0:
        engine.run("import", str(tarball), plain)
    with tempfile.TemporaryDirectory() as context:
        for ca in _host_cas():
            shutil.copy(ca, Path(context) / ca.name)
        (Path(context) / "Dockerfile").write_text(
            f"FROM {plain}\nCOPY *.crt /usr/local/share/ca-certificates/\nRUN update-ca-certificates\n"
            if _host_cas()
            else f"FROM {plain}\n"
        )
        engine.run("build", "--network", "host", "-t", image, context)
    return image
