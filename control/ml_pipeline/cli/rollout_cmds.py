"""`ml-pipeline rollout ...`: put a challenger on a small traffic share, step it up, watch it, abort it."""

from __future__ import annotations

from typing import Any

import click

from ml_pipeline.ab_testing.traffic_splitter import GradualRollout
from ml_pipeline.cli.checks import updating_registry, writable_registry, writing
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import actor_option, open_registry, reason_option, registry_option, state_view
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ServingState

share = click.FloatRange(0.0, 1.0)


def _rollout_view(state: ServingState) -> dict[str, Any]:
    view = state_view(state)
    if state.rollout is not None:
        rollout = GradualRollout.from_dict(state.rollout)
        view.update(
            rollout_step=rollout.step_percentage,
            rollout_max=rollout.max_traffic,
            rollout_started_at=rollout.started_at,
            rollout_complete=rollout.is_complete(),
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
    plan.increase_traffic()
    champion_share, challenger_share = plan.get_current_split()
    with writing(f"registry {reg.location}"):
        state = reg.set_traffic_split(
            champion_share,
            challenger_share,
            rollout=plan.to_dict(),
            actor=actor,
            reason=reason,
            expected_generation=state.generation,
        )
    emit(_rollout_view(state), as_json)


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
