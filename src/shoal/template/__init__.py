"""Templates: read-only root filesystems that sandboxes start from.

``recipe`` declares what a template contains, ``builder`` turns a recipe into an
owner-shifted root filesystem on disk (``python -m shoal.template build base``), and
``store`` resolves the ids clients send (``base``) to the current build.
"""

from shoal.template.recipe import RECIPES, Recipe
from shoal.template.store import Template, TemplateStore

__all__ = ["RECIPES", "Recipe", "Template", "TemplateStore"]
