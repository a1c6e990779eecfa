"""A guarded automatic rollout: shadow for a period, then A/B shares stepping up, each step only when the
servers' own metrics say the challenger is fit, an abort (all traffic to the champion) the moment one says not.

The plan and its progress live in the registry's serving state (`rollout`, with `mode` "shadow" or "ab" and an
`auto` part: the plan, when the next check is due, the counter totals of the last check), so a controller that
restarts resumes where the last one stopped; one controller at a time drives a registry's rollout (its
`controller_lock`), and every write also names the generation it read, so a state changed by hand is never
overwritten. Before each step the guardrails are checked on the traffic since the last check (`evidence.Totals`):
the servers' error ratio, the p99 latency of the model answering, the challenger's decision rate against the
champion's, and, once enough labelled requests exist, the paired report not significantly worse. Every step and
abort goes to the history with its evidence, and to the webhook when one is set.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ml_pipeline.ab_testing.evidence import Evidence, Totals
from ml_pipeline.ab_testing.traffic_splitter import GradualRollout
from ml_pipeline.errors import PipelineError, UsageError
from ml_pipeline.model_registry import ModelRegistry, ServingState
from ml_pipeline.monitoring.paired_report import PairedReport, shadow_records
from ml_pipeline.retraining.notify import WebhookNotifier

log = logging.getLogger(__name__)

ACTOR = "auto-rollout"
#: Outcomes after which nothing is left to drive.
FINAL = ("complete", "promoted", "aborted", "idle")


@dataclass(frozen=True)
class RolloutPlan:
    """Shadow for `shadow_seconds` (scoring `shadow_sample` of requests), then A/B from `initial_traffic` in steps
    of `step` every `interval_seconds` up to `max_traffic`; then, with `promote_when_done`, promote."""

    shadow_seconds: float = 86400.0
    shadow_sample: float = 1.0
    initial_traffic: float = 0.1
    step: float = 0.1
    max_traffic: float = 1.0
    interval_seconds: float = 86400.0
    promote_when_done: bool = False

    def __post_init__(self) -> None:
        if self.shadow_seconds < 0 or self.interval_seconds <= 0:
            raise UsageError("the shadow period must be >= 0 s and the step interval > 0 s")
        if not 0 < self.shadow_sample <= 1:
            raise UsageError(f"shadow_sample {self.shadow_sample:g} must be in (0, 1]")
        GradualRollout(self.initial_traffic, self.step, self.max_traffic)  # checks the shares


@dataclass(frozen=True)
class Guardrails:
    """Limits a step must stay within; `min_requests` of the challenger's traffic are needed to judge a step."""

    max_error_ratio: float = 0.01
    max_p99_ms: float = 50.0
    max_decision_rate_delta: float = 0.05
    min_requests: int = 200
    min_labelled: int = 200


@dataclass(frozen=True)
class Check:
    """One guardrail on one step's traffic: its value, its limit, and whether it held."""

    name: str
    value: float | None
    limit: float
    held: bool

    def text(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {shown} {'<=' if self.held else '>'} {self.limit:g}"


@dataclass(frozen=True)
class Outcome:
    """What one check did: waited, stepped, completed, promoted or aborted, and on which evidence."""

    action: str
    detail: str
    checks: list[Check] = field(default_factory=list)
    state: ServingState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "detail": self.detail, "checks": [asdict(c) for c in self.checks]}


def _now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")


class AutoRollout:
    """Drive the guarded plan of the registry's rollout: `start(model_id, plan)`, then `check()` or `run()`."""

    def __init__(
        self,
        registry: ModelRegistry,
        evidence: Evidence,
        guardrails: Guardrails | None = None,
        notifier: WebhookNotifier | None = None,
        predictions: Callable[[], pd.DataFrame] | None = None,
        labels: Callable[[], pd.DataFrame] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.evidence = evidence
        self.guardrails = guardrails or Guardrails()
        self.notifier = notifier
        self.predictions = predictions
        self.labels = labels
        self.clock = clock

    # ---- the plan in the registry ----

    def start(self, model_id: str, plan: RolloutPlan) -> ServingState:
        """Serve `model_id` as shadow (or, with no shadow period, on the initial share) under `plan`."""
        state = self.registry.serving_state()
        if state.challenger_id is not None:
            raise UsageError(f"{state.challenger_id} is already the challenger: run `ml-pipeline rollout abort` first")
        now = self.clock()
        auto = {
            "plan": asdict(plan),
            "model_id": model_id,
            "next_check_at": now + (plan.shadow_seconds or plan.interval_seconds),
            "baseline": self.evidence.totals().to_dict(),
            "guardrails": asdict(self.guardrails),
            "status": "running",
        }
        gradual = GradualRollout(plan.initial_traffic, plan.step, plan.max_traffic).to_dict()
        reason = f"auto-rollout started ({self._plan_text(plan)}), evidence from {self.evidence.describe()}"
        if plan.shadow_seconds > 0:
            rollout = {**gradual, "mode": "shadow", "shadow_sample": plan.shadow_sample, "auto": auto}
            new = self.registry.set_challenger(model_id, 0.0, rollout=rollout, actor=ACTOR, reason=reason)
        else:
            rollout = {**gradual, "mode": "ab", "auto": auto}
            new = self.registry.set_challenger(
                model_id, plan.initial_traffic, rollout=rollout, actor=ACTOR, reason=reason
            )
        self._announce(Outcome("started", reason, state=new), model_id)
        return new

    @staticmethod
    def _plan_text(plan: RolloutPlan) -> str:
        return (
            f"shadow {plan.shadow_seconds:g} s on {plan.shadow_sample:.0%} of requests, then "
            f"{plan.initial_traffic:.0%} + {plan.step:.0%} every {plan.interval_seconds:g} s up to "
            f"{plan.max_traffic:.0%}{', then promote' if plan.promote_when_done else ''}"
        )

    def active(self) -> bool:
        """Whether the registry holds a running automatic rollout."""
        state = self.registry.serving_state()
        auto = (state.rollout or {}).get("auto") or {}
        return state.challenger_id is not None and auto.get("status") == "running"

    # ---- one check ----

    def check(self) -> Outcome:
        """If the next check is due: judge the traffic since the last one, then step, complete or abort."""
        state = self.registry.serving_state()
        rollout = dict(state.rollout or {})
        auto = dict(rollout.get("auto") or {})
        if state.challenger_id is None or auto.get("status") != "running":
            return Outcome("idle", "no automatic rollout is running")
        now = self.clock()
        if now < float(auto["next_check_at"]):
            return Outcome("waiting", f"next check at {_now_iso(float(auto['next_check_at']))}")
        plan = RolloutPlan(**auto["plan"])
        totals = self.evidence.totals()
        step = totals.since(Totals.from_dict(auto.get("baseline") or {}))
        mode = rollout.get("mode", "ab")
        if "guardrails" in auto:  # the plan's own limits, whichever controller resumes it
            self.guardrails = Guardrails(**auto["guardrails"])
        checks, enough, champion_rate = self._guardrails(step, state, mode, auto.get("champion_rate"))
        if champion_rate is not None:
            auto["champion_rate"] = champion_rate
        if not all(c.held for c in checks):
            return self._abort(state, checks)
        if not enough:
            detail = (
                f"not enough traffic to judge this step yet ({self._challenger_traffic(step, state, mode):.0f} of "
                f"{self.guardrails.min_requests} requests): checking again in {plan.interval_seconds:g} s"
            )
            auto["next_check_at"] = now + plan.interval_seconds
            self._write(state, {**rollout, "auto": auto}, None, detail, checks)
            return Outcome("waiting", detail, checks)
        auto["baseline"] = totals.to_dict()
        auto["next_check_at"] = now + plan.interval_seconds
        gradual = GradualRollout.from_dict(rollout)
        held = "guardrails held: " + "; ".join(c.text() for c in checks)
        if mode == "shadow":
            share = gradual.get_current_split()[1]
            detail = f"shadow period over, {held}: A/B on {share:.0%}"
            new = self._write(state, {**rollout, "mode": "ab", "auto": auto}, share, detail, checks)
            return self._announce(Outcome("stepped", detail, checks, new), state.challenger_id)
        if not gradual.is_complete():
            share = gradual.increase_traffic()
            detail = f"{held}: challenger share -> {share:.0%}"
            new = self._write(state, {**rollout, **gradual.to_dict(), "auto": auto}, share, detail, checks)
            return self._announce(Outcome("stepped", detail, checks, new), state.challenger_id)
        if plan.promote_when_done:
            detail = f"{held}: at {gradual.max_traffic:.0%}, promoting {state.challenger_id}"
            new = self.registry.promote_to_champion(state.challenger_id, actor=ACTOR, reason=detail)
            return self._announce(Outcome("promoted", detail, checks, new), state.challenger_id)
        auto["status"] = "complete"
        detail = f"{held}: complete at {gradual.max_traffic:.0%}; promote with `ml-pipeline registry promote`"
        new = self._write(state, {**rollout, "auto": auto}, None, detail, checks)
        return self._announce(Outcome("complete", detail, checks, new), state.challenger_id)

    def _challenger_traffic(self, step: Totals, state: ServingState, mode: str) -> float:
        challenger = state.challenger_id or ""
        counter = "shadow_requests" if mode == "shadow" else "requests"
        return step.count(counter, challenger)

    def _guardrails(
        self, step: Totals, state: ServingState, mode: str, reference: float | None
    ) -> tuple[list[Check], bool, float | None]:
        """The checks on one step's traffic, whether it had enough of it to judge, and the champion's decision rate
        measured on it (None when the champion answered too few: near the maximum share the challenger's rate is
        compared with `reference`, the champion's rate at an earlier step)."""
        g = self.guardrails
        champion, challenger = state.champion_id or "", state.challenger_id or ""
        answered = sum(step.counts.get("requests", {}).values())
        errors = step.server_errors / (answered + step.server_errors) if answered + step.server_errors else 0.0
        checks = [Check("error ratio", errors, g.max_error_ratio, errors <= g.max_error_ratio)]
        traffic = self._challenger_traffic(step, state, mode)
        enough = traffic >= g.min_requests
        p99 = step.p99_ms(champion if mode == "shadow" else challenger)
        checks.append(Check("p99 latency ms", p99, g.max_p99_ms, p99 is None or p99 <= g.max_p99_ms))
        measured = step.count("requests", champion) >= g.min_requests
        champion_rate = _rate(step.count("fraud", champion), step.count("requests", champion)) if measured else None
        if champion_rate is None:
            champion_rate = reference if reference is not None else float("nan")
        if mode == "shadow":
            rate = _rate(step.count("shadow_fraud", challenger), step.count("shadow_requests", challenger))
        else:
            rate = _rate(step.count("fraud", challenger), step.count("requests", challenger))
        delta = abs(rate - champion_rate) if enough and not (math.isnan(rate) or math.isnan(champion_rate)) else None
        limit = g.max_decision_rate_delta
        checks.append(Check("decision-rate delta", delta, limit, delta is None or delta <= limit))
        report = self._paired(champion, challenger)
        if report is not None:
            worse = report.significantly_worse()
            checks.append(Check("paired AUC difference (upper 95 %)", report.differences["auc"].high, 0.0, not worse))
        return checks, enough, champion_rate if measured else None

    def _paired(self, champion: str, challenger: str) -> PairedReport | None:
        """The paired report of this champion and shadow once enough of their requests are labelled, else None."""
        if self.predictions is None or self.labels is None:
            return None
        records = shadow_records(self.predictions())
        records = records[(records["model_version"] == champion) & (records["shadow_model_version"] == challenger)]
        labels = self.labels()
        if records["request_id"].isin(labels["alert_id"]).sum() < self.guardrails.min_labelled:
            return None
        return PairedReport.compute(records, labels, n_bootstrap=300)

    def _write(
        self, state: ServingState, rollout: dict[str, Any], share: float | None, detail: str, checks: list[Check]
    ) -> ServingState:
        challenger_share = state.challenger_share if share is None else share
        return self.registry.set_traffic_split(
            round(1.0 - challenger_share, 12),
            challenger_share,
            rollout=rollout,
            actor=ACTOR,
            reason=detail,
            expected_generation=state.generation,
        )

    def _abort(self, state: ServingState, checks: list[Check]) -> Outcome:
        failed = "; ".join(c.text() for c in checks if not c.held)
        detail = f"auto-rollout aborted, all traffic to the champion {state.champion_id}: {failed}"
        new = self.registry.clear_challenger(actor=ACTOR, reason=detail)
        log.warning("%s", detail)
        return self._announce(Outcome("aborted", detail, checks, new), state.challenger_id or "")

    def _announce(self, outcome: Outcome, model_id: str) -> Outcome:
        log.info("rollout of %s: %s: %s", model_id, outcome.action, outcome.detail)
        if self.notifier is not None:
            self.notifier.notify({"event": f"rollout-{outcome.action}", "model_id": model_id, **outcome.to_dict()})
        return outcome

    # ---- the loop ----

    def run(self, poll_seconds: float = 1.0, sleep: Callable[[float], None] = time.sleep, lock: bool = True) -> Outcome:
        """Check until the rollout completes, is promoted or aborted (or is stopped by hand). Holds the registry's
        controller lock throughout (unless the caller holds it: `lock=False`), so a second controller refuses."""
        with self.registry.controller_lock("rollout") if lock else contextlib.nullcontext():
            while True:
                outcome = self.check()
                if outcome.action in FINAL:
                    return outcome
                sleep(poll_seconds)


class RolloutDriver:
    """A background thread that drives the registry's automatic rollout, if any, every `poll_seconds` (what
    `ml-pipeline scheduler` runs beside the retraining schedule); it steps aside while another controller holds
    the lock."""

    def __init__(self, controller: AutoRollout, poll_seconds: float = 30.0) -> None:
        self.controller = controller
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-driver", daemon=True)

    def start(self) -> RolloutDriver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                if self.controller.active():
                    with self.controller.registry.controller_lock("rollout"):
                        self.controller.check()
            except PipelineError as exc:
                log.warning("rollout driver: %s", exc)


def _rate(flagged: float, total: float) -> float:
    return flagged / total if total else float("nan")
