"""Shoal's in-sandbox code-interpreter server (E2B port 49999), built on ``jupyter_client``.

Self-contained: it imports nothing from the rest of Shoal, so the package can be copied into the
``code-interpreter-v1`` template as is. Wire contract: e2b-compat.md §5.

Modules: ``config`` (settings from the environment), ``events`` (NDJSON stream objects),
``mime`` (Jupyter MIME bundle → E2B result), ``kernels`` (one supervised kernel),
``execute`` (one execution → events), ``envs`` (sandbox-level and per-execution env vars),
``contexts`` (the context registry), ``app`` (Starlette ASGI app).
"""

from shoal.interpreter.app import create_app
from shoal.interpreter.config import Settings

__all__ = ["Settings", "create_app"]
