"""`webhook-ingest`: operator commands that work without the web process."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
import redis

from webhook_ingest.config import ConfigError, load_settings, redacted_url


def _services():
    from webhook_ingest.services import build_services

    try:
        return build_services()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _OneLineWhenRedisIsDown(click.Group):
    """Every command reads Redis: when it does not answer, say so in one line
    (which server, redacted, and why) instead of redis-py's traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise click.ClickException(f"Redis unavailable at {_redis_shown()}: {exc}") from None


def _redis_shown() -> str:
    try:
        return redacted_url(load_settings().redis_url)
    except ConfigError:
        return "REDIS_URL"


@click.group(cls=_OneLineWhenRedisIsDown)
def main() -> None:
    """Operate webhook-ingest (reads the same environment as the service)."""


@main.command("check-config")
def check_config() -> None:
    """Preflight: validate the environment as the processes do, reach Redis and the
    broker, and say what each provider can do. Exits 1 on any error."""
    import os

    from webhook_ingest.operations import preflight
    from webhook_ingest.providers import configuration_warnings, load_providers

    def problem(line: str) -> None:
        errors.append(line)
        click.echo(f"ERROR {line}", err=True)

    errors: list[str] = []
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in exc.problems:
            problem(line)
        raise click.ClickException(_errors_found(errors)) from None
    try:
        # without a Redis client, as the worker's start-up check builds them
        providers = load_providers(settings)
    except ConfigError as exc:
        providers = {}
        for line in exc.problems:
            problem(line)
    for name, provider in sorted(providers.items()):
        if not provider.supports_webhooks():
            click.echo(f"provider {name}: poll only (the provider sends no webhooks)")
        elif provider.enabled:
            click.echo(f"provider {name}: enabled ({provider.verifier.scheme})")
        else:
            click.echo(
                f"provider {name}: DISABLED - configure its verification "
                f"({provider.configuration_hint}) to accept its webhooks"
            )
        click.echo(f"  {name}: {preflight.capabilities(provider)}")
    for warning in configuration_warnings(providers):
        click.echo(f"WARNING {warning}")
    for warning in preflight.unknown_variable_warnings(providers, os.environ):
        click.echo(f"WARNING {warning}")
    # shown so an operator sees which servers, never with their passwords
    for what, url, failure in preflight.connection_problems(settings):
        if failure is None:
            click.echo(f"{what}: {url} ok")
        else:
            problem(f"{what}: {url} unreachable ({failure})")
    for shown, failure, fatal in preflight.sentinel_views(settings):
        click.echo(shown)
        if failure and fatal:
            problem(failure)
        elif failure:
            click.echo(f"WARNING {failure}")
    shown, warning = preflight.replica_acknowledgement(settings)
    click.echo(shown)
    if warning:
        click.echo(f"WARNING {warning}")
    if not settings.admin_token:
        click.echo("operator endpoints: DISABLED - set ADMIN_TOKEN to enable /jobs")
    if errors:
        raise click.ClickException(_errors_found(errors))
    click.echo("configuration ok")


def _errors_found(errors: list[str]) -> str:
    return f"{len(errors)} error{'' if len(errors) == 1 else 's'} found (ERROR lines above)"


@main.group("jobs")
def jobs() -> None:
    """Jobs as Redis holds them."""


@jobs.command("show")
@click.argument("job_id")
def show_job(job_id: str) -> None:
    """Mapping, state and the last few observations, as GET /jobs/<job_id> shows them."""
    from webhook_ingest.state.job_view import job_view

    view = job_view(_services(), job_id)
    if view is None:
        raise click.ClickException(f"unknown job {job_id}: no mapping, state or events in Redis")
    json.dump(view, sys.stdout, indent=2)
    click.echo()


@main.group("dead-letters")
def dead_letters() -> None:
    """Deliveries that could not be applied."""


@dead_letters.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--provider", help="Only this provider's letters.")
@click.option("--reason", help="Only letters parked for this reason.")
def list_dead_letters(limit: int, provider: str | None, reason: str | None) -> None:
    letters = _services().dead_letters.list(limit, provider, reason, with_message=False)
    if not letters:
        filters = ", ".join(
            f"{name}={value}"
            for name, value in (("provider", provider), ("reason", reason))
            if value
        )
        click.echo(f"no dead letters{f' ({filters})' if filters else ''}")
    for letter in letters:
        click.echo(
            f"{letter['id']}  {letter['provider']:<10} {letter['reason']:<22} "
            f"job={letter['job_id'] or '-'} delivery={letter['delivery_id']}  "
            f"{letter['error'][:80]}"
        )


@dead_letters.command("show")
@click.argument("letter_id")
def show_dead_letter(letter_id: str) -> None:
    letter = _services().dead_letters.get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id}")
    json.dump(letter, sys.stdout, indent=2)
    click.echo()


def _celery():
    """The service's Celery app (the CLI only publishes), unless the caller passed one
    as the context object (tests pass one on another broker)."""
    from celery import Celery

    given = click.get_current_context().find_object(Celery)
    if given is not None:
        return given
    from webhook_ingest.handoff import broker

    try:
        return broker.celery_app(load_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _letter_line(verb: str, letter: dict) -> str:
    return (
        f"{verb} {letter['id']}  {letter['provider']:<10} {letter['reason']:<22} "
        f"job={letter['job_id'] or '-'} delivery={letter['delivery_id']}"
    )


def _counted(count: int, verb: str) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'} {verb}"


def _check_target(letter_id: str | None, everything: bool, **filters: object) -> None:
    if everything == (letter_id is not None):
        raise click.UsageError("give either one LETTER_ID or --all")
    used = [f"--{name.replace('_', '-')}" for name, value in filters.items() if value is not None]
    if used and not everything:
        raise click.UsageError(f"{', '.join(used)} only go with --all")


@dead_letters.command("replay")
@click.argument("letter_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Replay every matching letter.")
@click.option("--provider", help="With --all: only this provider's letters.")
@click.option("--reason", help="With --all: only letters parked for this reason.")
def replay_dead_letters(
    letter_id: str | None, everything: bool, provider: str | None, reason: str | None
) -> None:
    """Re-enqueue parked deliveries through the normal path (idempotent).

    A delivery applied meanwhile ends as a duplicate; one that fails again is
    parked again as a new letter.
    """
    from webhook_ingest.handoff.publish import EnqueueFailed
    from webhook_ingest.operations.dead_letters import UnknownDeadLetter

    _check_target(letter_id, everything, provider=provider, reason=reason)
    letters, celery_app = _services().dead_letters, _celery()
    replayed = 0
    if letter_id is not None:
        try:
            click.echo(_letter_line("replayed", letters.replay(letter_id, celery_app)))
        except UnknownDeadLetter:
            raise click.ClickException(f"no dead letter {letter_id}") from None
        except EnqueueFailed as exc:
            raise click.ClickException(
                f"broker unavailable ({exc}): dead letter {letter_id} is kept, replay it later"
            ) from None
        click.echo(_counted(1, "replayed"))
        return
    try:
        for letter in letters.replay_matching(celery_app, provider, reason):
            click.echo(_letter_line("replayed", letter))
            replayed += 1
    except EnqueueFailed as exc:
        click.echo(_counted(replayed, "replayed"))
        raise click.ClickException(
            f"broker unavailable ({exc}): the remaining letters are kept, replay them later"
        ) from None
    click.echo(_counted(replayed, "replayed"))


@dead_letters.command("purge")
@click.argument("letter_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Purge every matching letter.")
@click.option("--provider", help="With --all: only this provider's letters.")
@click.option("--reason", help="With --all: only letters parked for this reason.")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="With --all: only letters parked at least this long ago.",
)
@click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation.")
def purge_dead_letters(
    letter_id: str | None,
    everything: bool,
    provider: str | None,
    reason: str | None,
    older_than: int | None,
    yes: bool,
) -> None:
    """Delete parked deliveries for good."""
    from webhook_ingest.clock import now_ms

    _check_target(letter_id, everything, provider=provider, reason=reason, older_than=older_than)
    letters = _services().dead_letters
    if letter_id is not None:
        letter = letters.purge(letter_id)
        if letter is None:
            raise click.ClickException(f"no dead letter {letter_id}")
        click.echo(_letter_line("purged", letter))
        click.echo(_counted(1, "purged"))
        return
    # Fixed now, so the purge takes exactly the letters that were confirmed.
    parked_before = now_ms() - (older_than or 0) * 1000
    matching = len(letters.select(provider, reason, parked_before))
    if matching == 0:
        click.echo(_counted(0, "purged"))
        return
    if not yes:
        click.confirm(f"Purge {_counted(matching, 'for good')}?", abort=True)
    purged = 0
    for letter in letters.purge_matching(provider, reason, parked_before):
        click.echo(_letter_line("purged", letter))
        purged += 1
    click.echo(_counted(purged, "purged"))


@main.group("raw-deliveries")
def raw_deliveries() -> None:
    """Every verified delivery of the last RAW_RETENTION_SECONDS (off when 0)."""


def _raw_deliveries():
    services = _services()
    if not services.raw_deliveries.enabled:
        click.echo("raw retention is off (RAW_RETENTION_SECONDS=0): nothing new is kept", err=True)
    return services.raw_deliveries


@raw_deliveries.command("list")
@click.option("--provider", help="Only this provider's deliveries.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
def list_raw_deliveries(provider: str | None, limit: int) -> None:
    """Newest first."""
    for delivery in _raw_deliveries().list(provider, limit):
        received = datetime.fromtimestamp(delivery["received_at"] / 1000, UTC)
        click.echo(
            f"{received.isoformat(timespec='milliseconds')}  {delivery['provider']:<10} "
            f"delivery={delivery['delivery_id']} job={delivery['job_id'] or '-'} "
            f"{len(delivery['body'])} bytes"
        )


@raw_deliveries.command("show")
@click.argument("provider")
@click.argument("delivery_id")
def show_raw_delivery(provider: str, delivery_id: str) -> None:
    delivery = _raw_deliveries().get(provider, delivery_id)
    if delivery is None:
        raise click.ClickException(f"no raw delivery {provider} {delivery_id}")
    json.dump(delivery, sys.stdout, indent=2)
    click.echo()


if __name__ == "__main__":
    main()
