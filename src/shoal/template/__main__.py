"""``python -m shoal.template build NAME [--force] [--mirror URI]`` and ``... list``.

Settings come from ``SHOAL_*`` variables (``SHOAL_DATA_DIR``, ``SHOAL_TEMPLATE_DIR``,
``SHOAL_UID_BASE``). ``build`` prints one line and is a no-op when the recipe's build
already exists, so ``scripts/setup`` calls it on every run.
"""

from __future__ import annotations

import asyncio
import sys

import click

from shoal.config import Settings
from shoal.errors import ShoalError
from shoal.template.builder import TemplateBuilder
from shoal.template.recipe import RECIPES
from shoal.template.store import TemplateStore


@click.group()
def main() -> None:
    """Build and list sandbox templates."""


@main.command()
@click.argument("name", type=click.Choice(sorted(RECIPES)))
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date build exists.")
@click.option("--mirror", help="Debian archive URI (default: the host's own apt sources).")
def build(name: str, force: bool, mirror: str | None) -> None:
    """Build template NAME unless its current recipe is already built."""
    settings = Settings.from_env()
    builder = TemplateBuilder(settings.templates_path, settings.uid_base, mirror=mirror)
    try:
        result = asyncio.run(builder.build(RECIPES[name], force=force))
    except ShoalError as exc:
        click.echo(f"template {name}: {exc.message}", err=True)
        sys.exit(1)
    size = f"{result.size_bytes / 1e6:.0f} MB"
    if result.cached:
        click.echo(f"template {name}: up to date ({result.build_hash[:12]}, {size})")
    else:
        click.echo(
            f"template {name}: built {result.build_hash[:12]} in {result.seconds:.1f} s, "
            f"{size} at {result.path}"
        )


@main.command(name="list")
def list_() -> None:
    """Show the current build of every template."""
    store = TemplateStore(Settings.from_env().templates_path)
    for t in store.list():
        click.echo(
            f"{t.template_id}\t{t.build_hash[:12]}\t{t.built_at}\t"
            f"{t.size_bytes / 1e6:.0f} MB\t{t.rootfs}"
        )


if __name__ == "__main__":
    main()
