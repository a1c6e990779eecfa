"""Make the serving core serve what the registry says: load and verify new models, then swap them in.

The registry is the one source of truth (champion, challenger, split, generation). `converge()` compares the
registry's generation with the one last applied; on a change it loads each new model's compiled library
through CompiledModel with the sha256 recorded at compilation, and only a verified model reaches the core.
A model that fails to load is not swapped in: the slot keeps its previous model, the error is logged and
counted, and the next generation change (or a forced converge, e.g. on SIGHUP) tries again.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.errors import PipelineError
from ml_pipeline.model_registry import ModelRegistry, ServingState
from ml_pipeline.native.compiled_model import CompiledModel, ModelLoadError
from ml_pipeline.native.serving_core import ServingCore

log = logging.getLogger(__name__)


class ModelNotServable(Exception):
    """A model listed by the registry cannot be served (not compiled, missing file, hash mismatch, bad ABI)."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified model in a slot: its id, decision threshold and the sha256 of the library that was loaded."""

    model_id: str
    threshold: float
    sha256: str


class RegistryConvergence:
    """Keeps a ServingCore equal to the registry's serving state; thread-safe, one convergence at a time."""

    def __init__(self, registry: ModelRegistry, core: ServingCore, enable_ab_testing: bool = True) -> None:
        self.registry = registry
        self.core = core
        self.enable_ab_testing = enable_ab_testing
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.traffic_splitter = TrafficSplitter(1.0, 0.0)
        self.generation: int | None = None
        self.events: Counter[tuple[str, str]] = Counter()  # (event, slot) -> count, exported as metrics
        self._lock = threading.Lock()

    def converge(self, force: bool = False) -> bool:
        """Apply the registry's state if its generation changed (or `force`); True when something was applied."""
        with self._lock:
            state = self.registry.serving_state()
            if state.generation == self.generation and not force:
                return False
            self._apply(state)
            self.generation = state.generation
            return True

    def _apply(self, state: ServingState) -> None:
        if state.champion_id is not None and (self.champion is None or self.champion.model_id != state.champion_id):
            loaded = self._load("champion", state.champion_id)
            if loaded is not None:
                model, compiled = loaded
                self.core.set_champion(compiled.capsule(), model.model_id, model.threshold)
                self.champion = model
                self._swapped("champion", model)
        challenger_id = state.challenger_id if self.enable_ab_testing else None
        share = state.challenger_share if challenger_id is not None else 0.0
        if challenger_id is None:
            if self.challenger is not None:
                self.core.set_challenger(None)
                log.info("challenger %s removed; all traffic to the champion", self.challenger.model_id)
                self.challenger = None
                self.events["unload", "challenger"] += 1
        elif self.challenger is None or self.challenger.model_id != challenger_id:
            loaded = self._load("challenger", challenger_id)
            if loaded is not None:
                model, compiled = loaded
                splitter = TrafficSplitter(1.0 - share, share)
                self.core.set_challenger(compiled.capsule(), model.model_id, model.threshold, splitter.challenger_cut)
                self.challenger = model
                self.traffic_splitter = splitter
                self._swapped("challenger", model)
        if self.challenger is not None and self.traffic_splitter.model_b_traffic != share:
            splitter = TrafficSplitter(1.0 - share, share)
            self.core.set_split(splitter.challenger_cut)
            self.traffic_splitter = splitter
            log.info("traffic split: challenger %s gets %.1f%%", self.challenger.model_id, 100 * share)
            self.events["split", "challenger"] += 1
        if self.challenger is None:
            self.traffic_splitter = TrafficSplitter(1.0, 0.0)

    def _load(self, slot: str, model_id: str) -> tuple[LoadedModel, CompiledModel] | None:
        try:
            meta = self.registry.get_model(model_id)
            compiled = meta.compiled or {}
            if not compiled.get("path") or not compiled.get("sha256"):
                raise ModelNotServable(f"{model_id} has no compiled library: run `ml-pipeline compile {model_id}`")
            library = CompiledModel(compiled["path"], compiled["sha256"], model_id)
        except (ModelNotServable, ModelLoadError, PipelineError, OSError) as exc:
            kept = self.champion if slot == "champion" else self.challenger
            log.error(
                "%s %s not loaded, keeping %s: %s", slot, model_id, kept.model_id if kept else "an empty slot", exc
            )
            self.events["load_failed", slot] += 1
            return None
        return LoadedModel(model_id, float(meta.threshold), library.sha256), library

    def _swapped(self, slot: str, model: LoadedModel) -> None:
        log.info("%s is now %s (threshold %g, sha256 %s)", slot, model.model_id, model.threshold, model.sha256[:12])
        self.events["swap", slot] += 1
