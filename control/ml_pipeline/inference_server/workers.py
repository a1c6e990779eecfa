"""Run the inference server: one process, or N processes sharing the port with SO_REUSEPORT.

The kernel spreads incoming connections over the N processes, so one host uses all its cores (each process
has its own interpreter and its own serving core; all converge to the same registry). The parent forwards
SIGTERM/SIGINT/SIGHUP to every worker and exits 0 when all of them drained and exited 0.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from types import FrameType

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.inference_server.settings import ServerSettings
from ml_pipeline.logs import configure_logging

log = logging.getLogger(__name__)


def _serve_worker(settings: ServerSettings, index: int, log_level: int) -> None:
    """One worker process: its log lines say ML_ENVIRONMENT and its index, as the parent's say ML_ENVIRONMENT."""
    configure_logging(log_level, MLPipelineConfig.from_env().environment, worker=index)
    asyncio.run(settings.make_server(index).serve())


def run(settings: ServerSettings) -> int:
    """Serve until SIGTERM; the exit code is 0 after a clean drain of every process."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server's handler is set (inherited by workers)
    if settings.workers == 1:
        asyncio.run(settings.make_server().serve())
        return 0
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    processes = [
        context.Process(target=_serve_worker, args=(settings, i, level), name=f"inference-worker-{i}")
        for i in range(settings.workers)
    ]
    for process in processes:
        process.start()
    log.info("%d workers share port %d (pids %s)", len(processes), settings.port, [p.pid for p in processes])

    forwarded: set[int] = set()

    def forward(signum: int, _frame: FrameType | None) -> None:
        forwarded.add(signum)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for process in processes:
        process.join()
    # A worker still starting when SIGTERM/SIGINT came ends by the signal itself: it had nothing in flight.
    clean = {0} | {-signum for signum in forwarded if signum != signal.SIGHUP}
    codes = [process.exitcode for process in processes]
    if any(code not in clean for code in codes):
        log.error("worker exit codes: %s", codes)
        return 1
    return 0
