"""Finding built templates by the ids clients ask for.

:meth:`TemplateStore.resolve` sits on the sandbox-create hot path, so it costs one
``readlink`` of the ``current`` link when nothing changed: the parsed ``template.json`` is
cached per build and reread only after a builder switched ``current``. The returned
``rootfs`` is the build's own directory, not a path through ``current``, so a sandbox keeps
its root filesystem when a newer build takes over.

    store = TemplateStore(settings.templates_path)
    template = store.resolve("base")
    template.rootfs          # <templates_path>/base/<hash>/rootfs
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import NotFound
from shoal.template.builder import CURRENT, TEMPLATE_JSON

ALIASES: dict[str, str] = {"base": "base", "code-interpreter-v1": "code-interpreter-v1"}
"""Template id or alias a client may send → template directory name."""


@dataclass(frozen=True)
class Template:
    template_id: str
    rootfs: Path
    default_user: str
    default_workdir: str
    env: dict[str, str] = field(default_factory=dict)
    build_hash: str = ""
    uid_base: int = 0
    """Host uid the rootfs's root is shifted to; the sandbox's id mapping must match it."""
    hostname: str = "sandbox"
    """The name ``/etc/hosts`` resolves; give the sandbox this UTS hostname, or sudo warns
    "unable to resolve host" on every call."""
    built_at: str = ""
    size_bytes: int = 0
    start_cmd: str = ""
    """Shell command to start in the background as ``default_user`` (empty: none)."""
    ready_port: int | None = None
    """Port on which ``start_cmd`` answers once it is ready."""
    cpu_count: int | None = None
    """The template's default vCPUs (None: the server's default)."""
    memory_mb: int | None = None
    kernels: tuple[str, ...] = ()
    """Jupyter kernelspecs registered system-wide."""


class TemplateStore:
    def __init__(self, templates_path: Path, aliases: dict[str, str] | None = None) -> None:
        self.templates_path = templates_path
        self._aliases = dict(ALIASES if aliases is None else aliases)
        self._cache: dict[str, tuple[str, Template]] = {}

    def resolve(self, template_id: str) -> Template:
        """The current build of ``template_id``; :class:`NotFound` if unknown or unbuilt."""
        name = self._aliases.get(template_id)
        if name is None:
            raise NotFound(f"template '{template_id}' not found")
        parent = self.templates_path / name
        try:
            target = os.readlink(parent / CURRENT)
        except OSError as exc:
            raise NotFound(
                f"template '{template_id}' is not built yet (run scripts/setup)"
            ) from exc
        cached = self._cache.get(template_id)
        if cached is not None and cached[0] == target:
            return cached[1]
        template = _load(template_id, parent / target)
        self._cache[template_id] = (target, template)
        return template

    def list(self) -> list[Template]:
        """Every known template that has a current build."""
        found = []
        for template_id in sorted(set(self._aliases.values())):
            try:
                found.append(self.resolve(template_id))
            except NotFound:
                continue
        return found


def _load(template_id: str, build: Path) -> Template:
    try:
        meta = json.loads((build / TEMPLATE_JSON).read_text())
        return Template(
            template_id=template_id,
            rootfs=build.resolve() / "rootfs",
            default_user=str(meta["default_user"]),
            default_workdir=str(meta["default_workdir"]),
            env={str(k): str(v) for k, v in meta.get("env", {}).items()},
            build_hash=str(meta.get("build_hash", build.name)),
            uid_base=int(meta.get("uid_base", 0)),
            hostname=str(meta.get("hostname", "sandbox")),
            built_at=str(meta.get("built_at", "")),
            size_bytes=int(meta.get("size_bytes", 0)),
            start_cmd=str(meta.get("start_cmd", "")),
            ready_port=_optional_int(meta.get("ready_port")),
            cpu_count=_optional_int(meta.get("cpu_count")),
            memory_mb=_optional_int(meta.get("memory_mb")),
            kernels=tuple(str(k) for k in meta.get("kernels", ())),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotFound(f"template '{template_id}' has no usable build at {build}") from exc


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"not an integer: {value!r}")
    return int(value)
