"""What the Open Inference Protocol says about the served model: its name, serving versions, input and outputs.

Scoring itself (ModelInfer) goes through the serving core; this directory answers the metadata calls of both
gRPC transports' GRPCInferenceService and of the HTTP/REST side. The server replaces its description after every
convergence (champion first, then the challenger), so readiness follows the champion's health.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml_pipeline import __version__

INPUT_NAME = "features"
OUTPUTS = (("probability", "FP32"), ("is_fraud", "BOOL"))
PLATFORM = "voxguard_treelite"
SERVER_NAME = "voxguard-ml-pipeline"


class ModelNotFound(LookupError):
    """A metadata or readiness call names a model or version this server does not serve (NOT_FOUND, HTTP 404)."""


@dataclass(frozen=True)
class ModelDescription:
    """The served model at one moment: versions (champion first), feature names, whether it can score."""

    versions: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    serving: bool = False


class ModelDirectory:
    """The model name of this server and the current description of its versions (replaced whole, never mutated)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.server_version = __version__
        self.description = ModelDescription()

    def describe(self, description: ModelDescription) -> None:
        """Answer from `description` from now on."""
        self.description = description

    def ready(self, name: str, version: str = "") -> bool:
        """Whether `name` (and `version`; empty: the champion) can score now."""
        d = self.description
        return d.serving and name == self.model_name and (not version or version in d.versions)

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        """The protocol's model metadata (its JSON form), or ModelNotFound."""
        d = self.description
        if name != self.model_name:
            raise ModelNotFound(f"unknown model {name!r}: this server serves {self.model_name!r}")
        if version and version not in d.versions:
            raise ModelNotFound(f"version {version!r} of model {name!r} is not serving")
        return {
            "name": self.model_name,
            "versions": list(d.versions),
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": "FP32",
                    "shape": [-1, len(d.feature_names)],
                    "parameters": {"feature_names": list(d.feature_names)},
                }
            ],
            "outputs": [{"name": output, "datatype": datatype, "shape": [-1]} for output, datatype in OUTPUTS],
        }

    def server_metadata(self) -> dict[str, Any]:
        """The protocol's server metadata (no optional extensions are supported)."""
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": []}
