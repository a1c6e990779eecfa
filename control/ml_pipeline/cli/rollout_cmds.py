"""`ml-pipeline rollout ...`: put a challenger in shadow or on a small traffic share, step it up (by hand or by a
guarded automatic plan), watch it, abort it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import click

from ml_pipeline.ab_testing.auto_rollout import AutoRollout, Guardrails, RolloutPlan
from ml_pipeline.ab_testing.evidence import Evidence, PrometheusMetrics, ScrapedMetrics
from ml_pipeline.ab_testing.traffic_splitter import GradualRollout
from ml_pipeline.cli.checks import updating_registry, writable_registry, writing
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import actor_option, open_registry, reason_option, registry_option, state_view
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.model_registry import ServingState
from ml_pipeline.monitoring.ab_report import load_labels, load_predictions
from ml_pipeline.retraining.notify import WebhookNotifier

share = click.FloatRange(0.0, 1.0)


def _rollout_view(state: ServingState) -> dict[str, Any]:
    view = state_view(state)
    if state.rollout is not None:
        rollout = GradualRollout.from_dict(state.rollout)
        view.update(
            rollout_mode=state.rollout.get("mode", "ab"),
            rollout_step=rollout.step_percentage,
            rollout_max=rollout.max_traffic,
            rollout_started_at=rollout.started_at,
            rollout_complete=rollout.is_complete(),
        )
        if state.rollout.get("mode") == "shadow":
            view["shadow_sample"] = state.rollout.get("shadow_sample", 1.0)
        auto = state.rollout.get("auto")
        if auto:
            view["auto_status"] = auto.get("status")
            view["auto_next_check_at"] = datetime.fromtimestamp(auto["next_check_at"], UTC).isoformat(
                timespec="seconds"
            )
    return view


@click.group("rollout")
def rollout() -> None:
    """Gradual rollout of a challenger: start, step, status, abort (writes the registry's traffic split)."""


@rollout.command("start")
@click.argument("model_id")
@click.option("--initial", type=share, default=0.1, show_default=True, help="Challenger share to start with.")
@click.option("--step", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True)
@click.option("--max", "max_share", type=share, default=1.0, show_default=True, help="Share where stepping stops.")
@registry_option
@actor_option
@reason_option
@json_option
def start_cmd(
    model_id: str,
    initial: float,
    step: float,
    max_share: float,
    registry_path: str | None,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Serve an approved model as challenger on the initial share of traffic."""
    reg = writable_registry(registry_path)
    current = reg.serving_state().challenger_id
    if current is not None:
        raise UsageError(f"{current} is already the challenger: run `ml-pipeline rollout abort` first")
    plan = GradualRollout(initial_traffic=initial, step_percentage=step, max_traffic=max_share)
    _, share = plan.get_current_split()
    with writing(f"registry {reg.location}"):
        state = reg.set_challenger(
            model_id,
            share,
            rollout=plan.to_dict(),
            actor=actor,
            reason=reason,
            progress=lambda line: click.echo(line, err=True),
        )
    emit(_rollout_view(state), as_json)


@rollout.command("step")
@registry_option
@actor_option
@reason_option
@json_option
def step_cmd(registry_path: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Raise the challenger's share by one step (never past the rollout's maximum)."""
    reg = writable_registry(registry_path)
    state = reg.serving_state()
    if state.challenger_id is None or state.rollout is None:
        raise UsageError("no rollout in progress: start one with `ml-pipeline rollout start MODEL_ID`")
    plan = GradualRollout.from_dict(state.rollout)
    if plan.is_complete():
        raise UsageError(
            f"the rollout is at its maximum ({plan.max_traffic:g}): "
            f"`ml-pipeline registry promote {state.challenger_id}` or `ml-pipeline rollout abort`"
        )
    if state.rollout.get("mode") != "shadow":  # from shadow, the first step is A/B on the initial share
        plan.increase_traffic()
    champion_share, challenger_share = plan.get_current_split()
    with writing(f"registry {reg.location}"):
        state = reg.set_traffic_split(
            champion_share,
            challenger_share,
            rollout={**plan.to_dict(), "mode": "ab"},
            actor=actor,
            reason=reason,
            expected_generation=state.generation,
        )
    emit(_rollout_view(state), as_json)


@rollout.command("shadow")
@click.argument("model_id")
@click.option(
    "--sample",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of requests the shadow model also scores.",
)
@click.option("--initial", type=share, default=0.1, show_default=True, help="Challenger share of the first A/B step.")
@click.option("--step", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True)
@click.option("--max", "max_share", type=share, default=1.0, show_default=True, help="Share where stepping stops.")
@registry_option
@actor_option
@reason_option
@json_option
def shadow_cmd(
    model_id: str,
    sample: float,
    initial: float,
    step: float,
    max_share: float,
    registry_path: str | None,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Serve an approved model as shadow: it scores requests beside the champion, which alone answers.

    Both answers go to the prediction log (compare them with `ml-pipeline ab-report`) and to the metrics;
    `ml-pipeline rollout step` then starts A/B on the initial share."""
    reg = writable_registry(registry_path)
    current = reg.serving_state().challenger_id
    if current is not None:
        raise UsageError(f"{current} is already the challenger: run `ml-pipeline rollout abort` first")
    plan = GradualRollout(initial_traffic=initial, step_percentage=step, max_traffic=max_share)
    with writing(f"registry {reg.location}"):
        state = reg.set_challenger(
            model_id,
            0.0,
            rollout={**plan.to_dict(), "mode": "shadow", "shadow_sample": sample},
            actor=actor,
            reason=reason or f"shadow on {sample:.0%} of requests",
            progress=lambda line: click.echo(line, err=True),
        )
    emit(_rollout_view(state), as_json)


@rollout.command("auto")
@click.argument("model_id", required=False)
@click.option("--resume", is_flag=True, help="Drive the automatic rollout the registry already holds.")
@click.option("--shadow-seconds", type=click.FloatRange(0.0), default=86400.0, show_default=True)
@click.option("--sample", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True)
@click.option("--initial", type=share, default=0.1, show_default=True)
@click.option("--step", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True)
@click.option("--max", "max_share", type=share, default=1.0, show_default=True)
@click.option(
    "--interval",
    type=click.FloatRange(0.0, min_open=True),
    default=86400.0,
    show_default=True,
    help="Seconds between two steps (and their checks).",
)
@click.option(
    "--promote-when-done", is_flag=True, help="Promote at the maximum share (on the approval the rollout required)."
)
@click.option("--prometheus-url", default=None, help="Prometheus HTTP API [default: $ML_PROMETHEUS_URL].")
@click.option("--metrics-url", multiple=True, help="A server's /metrics page, read directly (repeatable).")
@click.option("--max-error-ratio", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True)
@click.option("--max-p99-ms", type=click.FloatRange(0.0, min_open=True), default=50.0, show_default=True)
@click.option("--max-decision-rate-delta", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True)
@click.option(
    "--min-requests",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Challenger requests a step needs before it is judged.",
)
@click.option(
    "--min-labelled",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Labelled shadowed requests before the paired report is a guardrail.",
)
@click.option("--log", "log_source", default=None, help="Prediction log, for the paired report guardrail.")
@click.option("--labels", "label_source", default=None, help="Labels (alert_id, is_fraud), for the paired report.")
@click.option("--webhook", default=None, help="POST every step and abort here [default: $ML_RETRAIN_WEBHOOK_URL].")
@click.option(
    "--poll",
    type=click.FloatRange(0.0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds between looks at whether a check is due.",
)
@registry_option
@json_option
def auto_cmd(
    model_id: str | None,
    resume: bool,
    shadow_seconds: float,
    sample: float,
    initial: float,
    step: float,
    max_share: float,
    interval: float,
    promote_when_done: bool,
    prometheus_url: str | None,
    metrics_url: tuple[str, ...],
    max_error_ratio: float,
    max_p99_ms: float,
    max_decision_rate_delta: float,
    min_requests: int,
    min_labelled: int,
    log_source: str | None,
    label_source: str | None,
    webhook: str | None,
    poll: float,
    registry_path: str | None,
    as_json: bool,
) -> None:
    """Run a guarded rollout: shadow, then A/B steps, each only when the servers' metrics hold the guardrails.

    Aborts (all traffic to the champion) when a guardrail fails. The plan is kept in the registry: after a
    restart, `--resume` goes on where it stopped. One controller at a time drives a registry's rollout."""
    if resume == (model_id is not None):
        raise UsageError("give a MODEL_ID to start an automatic rollout, or --resume to drive the running one")
    reg = writable_registry(registry_path)
    prometheus = prometheus_url or os.environ.get("ML_PROMETHEUS_URL")
    if metrics_url and prometheus:
        raise UsageError("read the evidence from --prometheus-url or from --metrics-url pages, not both")
    if not metrics_url and not prometheus:
        raise UsageError(
            "the guardrails need the servers' metrics: --prometheus-url (or $ML_PROMETHEUS_URL) or --metrics-url"
        )
    evidence: Evidence = PrometheusMetrics(prometheus) if prometheus else ScrapedMetrics(metrics_url)
    guards = Guardrails(max_error_ratio, max_p99_ms, max_decision_rate_delta, min_requests, min_labelled)
    url = webhook or os.environ.get("ML_RETRAIN_WEBHOOK_URL")
    if (log_source is None) != (label_source is None):
        raise UsageError("the paired report guardrail needs both --log and --labels")
    controller = AutoRollout(
        reg,
        evidence,
        guards,
        notifier=WebhookNotifier(url) if url else None,
        predictions=(lambda: load_predictions(log_source)) if log_source else None,
        labels=(lambda: load_labels(label_source)) if label_source else None,
    )
    with reg.controller_lock("rollout"):
        if model_id is not None:
            plan = RolloutPlan(shadow_seconds, sample, initial, step, max_share, interval, promote_when_done)
            with writing(f"registry {reg.location}"):
                controller.start(model_id, plan)
        elif not controller.active():
            raise UsageError("no automatic rollout is running: start one with `ml-pipeline rollout auto MODEL_ID`")
        outcome = controller.run(poll_seconds=poll, lock=False)
    emit({**_rollout_view(reg.serving_state()), "outcome": outcome.action, "detail": outcome.detail}, as_json)
    if outcome.action == "aborted":
        raise JobFailed(outcome.detail)


@rollout.command("status")
@registry_option
@json_option
def status_cmd(registry_path: str | None, as_json: bool) -> None:
    """Show champion, challenger, split, generation and rollout progress."""
    emit(_rollout_view(open_registry(registry_path).serving_state()), as_json)


@rollout.command("abort")
@registry_option
@actor_option
@reason_option
@json_option
def abort_cmd(registry_path: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Stop the challenger: all traffic back to the champion."""
    with updating_registry(registry_path) as reg:
        state = reg.clear_challenger(actor=actor, reason=reason)
    emit(_rollout_view(state), as_json)


COMMANDS = [rollout]
