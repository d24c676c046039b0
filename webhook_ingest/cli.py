"""`webhook-ingest`: operator commands that work without the web process."""

from __future__ import annotations

import json
import sys

import click

from webhook_ingest.config import ConfigError


def _services():
    from webhook_ingest.services import build_services

    try:
        return build_services()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """Operate webhook-ingest (reads the same environment as the service)."""


@main.command("check-config")
def check_config() -> None:
    """Validate the environment and say which providers accept deliveries."""
    services = _services()
    for name, provider in sorted(services.providers.items()):
        if not provider.supports_webhooks():
            click.echo(f"provider {name}: poll only (the provider sends no webhooks)")
        elif provider.enabled:
            click.echo(f"provider {name}: enabled ({provider.verifier.scheme})")
        else:
            click.echo(
                f"provider {name}: DISABLED - configure its verification "
                f"({provider.configuration_hint}) to accept its webhooks"
            )
    settings = services.settings
    click.echo(f"redis: {settings.redis_url}")
    click.echo(f"broker: {settings.broker_url.split('@')[-1]}")
    if not settings.admin_token:
        click.echo("operator endpoints: DISABLED - set ADMIN_TOKEN to enable /jobs")


@main.group("jobs")
def jobs() -> None:
    """Jobs as Redis holds them."""


@jobs.command("show")
@click.argument("job_id")
def show_job(job_id: str) -> None:
    """Mapping, state and the last few observations, as GET /jobs/<job_id> shows them."""
    from webhook_ingest.job_view import job_view

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
def list_dead_letters(limit: int) -> None:
    for letter in _services().dead_letters.list(limit):
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


if __name__ == "__main__":
    main()
