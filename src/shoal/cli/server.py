"""``shoal serve`` and ``shoal agent``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import click

from shoal.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.command()
def serve() -> None:
    """Run the all-in-one server: API, one node agent and the proxy (settings: SHOAL_*)."""
    settings = _settings()
    _logging(settings)
    from shoal.server import serve as run

    _run(run(settings))


@click.command()
def agent() -> None:
    """Run a stand-alone node agent that joins SHOAL_CONTROL_PLANE_URL."""
    settings = _settings()
    _logging(settings)
    from shoal.server import run_agent

    _run(run_agent(settings))


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a server on uvloop (libuv's event loop, the one uvicorn prefers)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
