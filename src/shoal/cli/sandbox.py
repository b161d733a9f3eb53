"""``shoal sandbox ls|kill`` against a Shoal (or E2B) control plane."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import httpx


def _client(api_url: str | None, api_key: str | None) -> httpx.Client:
    url = api_url or os.environ.get("E2B_API_URL") or "http://127.0.0.1:3000"
    key = api_key or os.environ.get("E2B_API_KEY")
    if not key:
        raise click.UsageError("no API key: pass --api-key or set E2B_API_KEY")
    return httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=30.0, trust_env=False)


def _fail(response: httpx.Response) -> None:
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    click.echo(f"error {response.status_code}: {message}", err=True)
    sys.exit(1)


@click.group()
def sandbox() -> None:
    """List and kill sandboxes."""


@sandbox.command("ls")
@click.option("--api-url", envvar="E2B_API_URL", default=None)
@click.option("--api-key", envvar="E2B_API_KEY", default=None)
@click.option("--state", default="running,paused", show_default=True)
def ls(api_url: str | None, api_key: str | None, state: str) -> None:
    """List sandboxes."""
    rows: list[dict[str, Any]] = []
    with _client(api_url, api_key) as client:
        token: str | None = None
        while True:
            params: dict[str, str | int] = {"state": state, "limit": 100}
            if token:
                params["nextToken"] = token
            r = client.get("/v2/sandboxes", params=params)
            if r.status_code != 200:
                _fail(r)
            rows.extend(r.json())
            token = r.headers.get("x-next-token")
            if not token:
                break
    click.echo(f"{'SANDBOX ID':<22} {'TEMPLATE':<20} {'STATE':<8} {'STARTED':<27} END")
    for s in rows:
        click.echo(
            f"{s['sandboxID']:<22} {s.get('alias') or s['templateID']:<20} {s['state']:<8} "
            f"{s['startedAt']:<27} {s['endAt']}"
        )


@sandbox.command("kill")
@click.argument("sandbox_ids", nargs=-1, required=True)
@click.option("--api-url", envvar="E2B_API_URL", default=None)
@click.option("--api-key", envvar="E2B_API_KEY", default=None)
def kill(sandbox_ids: tuple[str, ...], api_url: str | None, api_key: str | None) -> None:
    """Kill sandboxes by id."""
    failed = False
    with _client(api_url, api_key) as client:
        for sid in sandbox_ids:
            r = client.delete(f"/sandboxes/{sid}")
            if r.status_code == 204:
                click.echo(f"killed {sid}")
            elif r.status_code == 404:
                click.echo(f"{sid}: not found", err=True)
                failed = True
            else:
                _fail(r)
    if failed:
        sys.exit(1)
