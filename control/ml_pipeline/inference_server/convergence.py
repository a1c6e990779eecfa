"""Make the serving core serve what the registry says: load and verify new models, then swap them in.

The registry is the one source of truth (champion, challenger, split, generation). `converge()` compares the
registry's generation with the one last applied; on a change it loads each new model's (or recompiled) library
through CompiledModel with the sha256 recorded at compilation, and only a verified model reaches the core.
A model that fails to load is not swapped in: the slot keeps its previous model, the error is logged and
counted, and the next generation change (or a forced converge, e.g. on SIGHUP) tries again. A poll costs one
read of the generation; the state and the models are read only when it changed. A registry that cannot be
reached (RegistryUnavailable: a database down or restarting) changes nothing: the slots keep serving, the
generation is not marked applied, and the next poll that reaches it catches up.

A database registry stores the libraries themselves (`libraries_in_store`): a new one is fetched once, checked
against its sha256 and loaded from memory (memory_library), so such a server needs no shared filesystem.

Each model comes with its explainer when the compiler made one (`<model_id>.trees`, checked against its sha256):
the core then gives its answers reasons. A model whose explainer is missing or cannot be loaded still serves;
its answers say they carry no reasons, and the log says why once per load.

A library is code the server runs, so before hashing it the server checks who could have written it
(`trusted_library`): it refuses a library that is not a regular file (a symbolic link, a FIFO...), that is
group- or world-writable, that is owned by anybody but root or the server's own user, or, when the server is
given a compiled-models folder, that lies outside it; the refusal is a ModelLoadError naming the file and why.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.errors import PipelineError
from ml_pipeline.explain.artifact import load_explainer
from ml_pipeline.explain.packing import UnexplainableModel
from ml_pipeline.inference_server.memory_library import memory_library
from ml_pipeline.model_registry import ModelRegistry, RegistryUnavailable, ServingState
from ml_pipeline.native.compiled_model import CompiledModel, ModelLoadError
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.native.tree_explainer import ExplainerLoadError, TreeExplainer

log = logging.getLogger(__name__)


class ModelNotServable(Exception):
    """A model listed by the registry cannot be served (not compiled, missing file, hash mismatch, bad ABI)."""


class UntrustedLibrary(ModelLoadError):
    """A compiled library that someone other than root or the server's user could have written, or that is not a
    regular file inside the configured compiled-models folder: it is not loaded."""


def _untrusted_reasons(info: os.stat_result, real_path: str, compiled_models_dir: str | None) -> list[str]:
    reasons = []
    if not stat.S_ISREG(info.st_mode):
        reasons.append("it is not a regular file")
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("world", stat.S_IWOTH)) if info.st_mode & bit]
    if writable:
        reasons.append(
            f"it is {'- and '.join(writable)}-writable (mode {stat.S_IMODE(info.st_mode):04o}), so another user "
            "could have changed its code (the compiler writes 0755: `chmod go-w` it, or recompile it)"
        )
    if info.st_uid not in (0, os.geteuid()):
        reasons.append(f"it is owned by uid {info.st_uid}, neither root nor this server's user (uid {os.geteuid()})")
    if compiled_models_dir is not None:
        allowed = os.path.realpath(compiled_models_dir)
        if real_path == allowed or os.path.commonpath([allowed, real_path]) != allowed:
            reasons.append(f"it is outside the compiled-models folder {allowed} (it resolves to {real_path})")
    return reasons


@contextlib.contextmanager
def trusted_library(
    path: str | os.PathLike[str], compiled_models_dir: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """Open the compiled library at `path` after checking that only root or this process's user could have written
    it (see the module docstring), and yield a path of the very file checked (`/proc/self/fd/N`, valid inside the
    block): what is then hashed and loaded cannot be swapped for another file after the check.

    UntrustedLibrary (a ModelLoadError) names the file and every reason it is refused; ModelLoadError when it
    cannot be opened."""
    shown = os.path.abspath(os.fspath(path))
    allowed = None if compiled_models_dir is None else os.fspath(compiled_models_dir)
    try:
        before = os.lstat(shown)
    except OSError as exc:
        raise ModelLoadError(f"cannot read compiled model {shown}: {exc.strerror}") from None
    if stat.S_ISLNK(before.st_mode):
        raise UntrustedLibrary(
            f"refused to load {shown}: it is a symbolic link, not a regular file (record the library's own path)"
        )
    reasons = _untrusted_reasons(before, os.path.realpath(shown), allowed)
    if reasons:  # refused before it is even opened (opening a FIFO or a device can block or act)
        raise UntrustedLibrary(f"refused to load {shown}: {'; '.join(reasons)}")
    try:
        fd = os.open(shown, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedLibrary(f"refused to load {shown}: it became a symbolic link while being checked") from None
        raise ModelLoadError(f"cannot read compiled model {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        opened = f"/proc/self/fd/{fd}"
        try:
            real_path = os.readlink(opened)  # the path of the file opened, whatever happened to `shown` meanwhile
        except OSError:
            real_path = os.path.realpath(shown)
            opened = shown  # no /proc: load by path (the sha256 check still covers what is loaded)
        reasons = _untrusted_reasons(info, real_path, allowed)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            reasons.append("it was replaced while being checked")
        if reasons:
            raise UntrustedLibrary(f"refused to load {shown}: {'; '.join(reasons)}")
        try:
            yield opened
        except ModelLoadError as exc:  # name the library, not the descriptor it was read through
            raise type(exc)(str(exc).replace(opened, shown)) from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model in a slot: its id, decision threshold, the sha256 of the library that was loaded, whether
    its answers carry reasons (an explainer was loaded with it), and its feature names in input order."""

    model_id: str
    threshold: float
    sha256: str
    explained: bool = False
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedLibrary:
    """What `_load` hands to the core for one slot: the verified library and its explainer (None: no reasons)."""

    model: LoadedModel
    library: CompiledModel
    explainer: TreeExplainer | None


class RegistryConvergence:
    """Keeps a ServingCore equal to the registry's serving state; thread-safe, one convergence at a time.

    With `compiled_models_dir`, a library recorded outside that folder (after resolving symbolic links) is refused;
    None (the default) loads a trusted library (see `trusted_library`) wherever the registry records it."""

    def __init__(
        self,
        registry: ModelRegistry,
        core: ServingCore,
        enable_ab_testing: bool = True,
        compiled_models_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.registry = registry
        self.core = core
        self.enable_ab_testing = enable_ab_testing
        self.compiled_models_dir = compiled_models_dir
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.traffic_splitter = TrafficSplitter(1.0, 0.0)
        #: The share of requests the challenger scores as shadow (None: it is an A/B challenger, or there is none).
        self.shadow_sample: float | None = None
        self.generation: int | None = None
        self.events: Counter[tuple[str, str]] = Counter()  # (event, slot) -> count, exported as metrics
        self._lock = threading.Lock()

    def converge(self, force: bool = False) -> bool:
        """Apply the registry's state if its generation changed (or `force`); True when something was applied."""
        with self._lock:
            if not force and self.generation is not None and self.registry.generation() == self.generation:
                return False
            state = self.registry.serving_state()
            if state.generation == self.generation and not force:
                return False
            self._apply(state)  # RegistryUnavailable passes through: this generation is not applied yet
            self.generation = state.generation
            return True

    def _stale(self, loaded: LoadedModel | None, model_id: str) -> bool:
        """Whether the slot holding `loaded` must (re)load `model_id`: another model, or a recompiled library."""
        if loaded is None or loaded.model_id != model_id:
            return True
        try:
            recorded = (self.registry.get_model(model_id).compiled or {}).get("sha256")
        except RegistryUnavailable:
            raise
        except PipelineError:
            return False  # unreadable now: keep serving what is loaded, retried at the next generation
        return recorded is not None and recorded != loaded.sha256

    def _apply(self, state: ServingState) -> None:
        if state.champion_id is not None and self._stale(self.champion, state.champion_id):
            loaded = self._load("champion", state.champion_id)
            if loaded is not None:
                model = loaded.model
                self.core.set_champion(loaded.library, model.model_id, model.threshold, loaded.explainer)
                self.champion = model
                self._swapped("champion", model)
        challenger_id = state.challenger_id if self.enable_ab_testing else None
        share = state.challenger_share if challenger_id is not None else 0.0
        rollout = state.rollout or {}
        shadow = float(rollout.get("shadow_sample", 1.0)) if challenger_id and rollout.get("mode") == "shadow" else None
        if challenger_id is None:
            if self.challenger is not None:
                self.core.set_challenger(None)
                log.info("challenger %s removed; all traffic to the champion", self.challenger.model_id)
                self.challenger = None
                self.events["unload", "challenger"] += 1
        elif self._stale(self.challenger, challenger_id):
            loaded = self._load("challenger", challenger_id)
            if loaded is not None:
                model = loaded.model
                splitter = TrafficSplitter(1.0 - share, share)
                self._set_shadow(shadow)  # before the model: a shadow never answers, not even once
                self.core.set_challenger(
                    loaded.library, model.model_id, model.threshold, splitter.challenger_cut, loaded.explainer
                )
                self.challenger = model
                self.traffic_splitter = splitter
                self._swapped("challenger", model)
        if self.challenger is not None and self.traffic_splitter.model_b_traffic != share:
            splitter = TrafficSplitter(1.0 - share, share)
            self.core.set_split(splitter.challenger_cut)  # ignored while shadow is on: the cut comes first
            self.traffic_splitter = splitter
            log.info("traffic split: challenger %s gets %.1f%%", self.challenger.model_id, 100 * share)
            self.events["split", "challenger"] += 1
        if self.challenger is None:
            self.traffic_splitter = TrafficSplitter(1.0, 0.0)
            shadow = None
        self._set_shadow(shadow)

    def _set_shadow(self, sample: float | None) -> None:
        """Turn shadow mode on (the challenger scores `sample` of requests, answering none) or off."""
        if sample == self.shadow_sample:
            return
        self.core.set_shadow(sample)
        self.shadow_sample = sample
        if sample is None:
            log.info("shadow mode off")
        else:
            log.info("challenger serves as shadow on %.0f%% of requests (the champion answers)", 100 * sample)
        self.events["shadow" if sample is not None else "shadow_off", "challenger"] += 1

    def _load(self, slot: str, model_id: str) -> LoadedLibrary | None:
        try:
            meta = self.registry.get_model(model_id)
            compiled = meta.compiled or {}
            if not compiled.get("path") or not compiled.get("sha256"):
                raise ModelNotServable(f"{model_id} has no compiled library: run `ml-pipeline compile {model_id}`")
            library = self._open_library(model_id, compiled)
        except RegistryUnavailable:
            raise
        except (ModelNotServable, ModelLoadError, PipelineError, OSError) as exc:
            kept = self.champion if slot == "champion" else self.challenger
            log.error(
                "%s %s not loaded, keeping %s: %s", slot, model_id, kept.model_id if kept else "an empty slot", exc
            )
            self.events["load_failed", slot] += 1
            return None
        explainer = self._explainer(slot, model_id, compiled, list(meta.features))
        model = LoadedModel(
            model_id, float(meta.threshold), library.sha256, explainer is not None, tuple(meta.features)
        )
        return LoadedLibrary(model, library, explainer)

    def _explainer(
        self, slot: str, model_id: str, compiled: dict[str, Any], features: list[str]
    ) -> TreeExplainer | None:
        """The model's verified explainer, or None (logged, counted) when it has none or it cannot be loaded."""
        try:
            return load_explainer(dict(compiled.get("explainer") or {}), features or None)
        except (UnexplainableModel, ExplainerLoadError) as exc:
            log.warning("%s %s serves without reasons: %s", slot, model_id, exc)
            self.events["explainer_unavailable", slot] += 1
            return None

    def _open_library(self, model_id: str, compiled: dict[str, Any]) -> CompiledModel:
        """Load and verify the recorded library: from the registry's own store (in memory) or from its path."""
        sha = compiled["sha256"]
        if self.registry.libraries_in_store:
            data = self.registry.library_bytes(model_id, sha)  # checked against sha, then again by the loader
            with memory_library(data) as path:
                try:
                    return CompiledModel(path, sha, model_id)
                except ModelLoadError as exc:
                    raise type(exc)(str(exc).replace(path, f"the library of {model_id}")) from None
        with trusted_library(compiled["path"], self.compiled_models_dir) as path:
            return CompiledModel(path, sha, model_id)

    def _swapped(self, slot: str, model: LoadedModel) -> None:
        log.info("%s is now %s (threshold %g, sha256 %s)", slot, model.model_id, model.threshold, model.sha256[:12])
        self.events["swap", slot] += 1
