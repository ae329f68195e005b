"""Sphinx configuration: the jaxreg docs site (guides in Markdown, API reference from docstrings).

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, installed or not

project = "jaxreg"
author = "the jaxreg developers"
copyright = "2026, the jaxreg developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True


html_theme = "furo"
html_title = "jaxreg"

# Broken cross-references into this project fail the build (-W). Names from other packages
# cannot be resolved offline (no intersphinx inventories are downloaded), so they are exempt.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|optax|flax|numpy|collections|pathlib|os|typing|torch)(\..*)?"),
]
