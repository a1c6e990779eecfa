"""`python -m ml_pipeline.inference_server`: serve with the settings of the environment (ML_* variables)."""

from __future__ import annotations

import logging
import sys

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.errors import PipelineError
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.inference_server.workers import run


def main() -> int:
    """Run the server until SIGTERM; exit 0 after a clean drain, 2 on bad configuration, 1 when it cannot serve."""
    try:
        settings = ServerSettings.from_env()
        logging.basicConfig(
            level=logging.DEBUG if MLPipelineConfig.from_env().debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return run(settings)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
