"""``shoal`` — one click group; each command group in its own module."""

from __future__ import annotations

import click

from shoal.cli.sandbox import sandbox
from shoal.cli.server import agent, serve


@click.group()
@click.version_option(package_name="shoal")
def cli() -> None:
    """Shoal: an agent-sandbox cloud that speaks the E2B API."""


cli.add_command(serve)
cli.add_command(agent)
cli.add_command(sandbox)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
