"""The control-plane REST API (E2B-compatible): routes, service layer, background loops."""

from shoal.api.app import build_api_app
from shoal.api.bootstrap import bootstrap
from shoal.api.registry import NodeRegistry, http_client_factory

__all__ = ["NodeRegistry", "bootstrap", "build_api_app", "http_client_factory"]
