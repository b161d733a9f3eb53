"""envd's ``process.Process`` service: one module per RPC, a per-sandbox process table
(:mod:`.table`), the per-client event stream (:mod:`.stream`) shared by Start and Connect."""

from shoal.envd.process.service import ProcessService

__all__ = ["ProcessService"]
