"""Sphinx configuration of the skquant documentation.

Build from the repository root, with the package importable (``pip install -e .``
or ``PYTHONPATH=.``)::

    export SKQUANT_DOCS_OFFLINE=1
    python -m sphinx -W --keep-going -b html docs docs/_build/html

``SKQUANT_DOCS_OFFLINE=1`` empties ``intersphinx_mapping``, so the build needs no
network (CI has none, and intersphinx would otherwise warn, failing ``-W``).
"""

import os
import sys
from pathlib import Path

# One BLAS thread for the whole build, set before NumPy is first imported (here):
# OpenBLAS's threads, on a machine whose cores are busy with other work, slowed the
# gallery's LAPACK-heavy examples (SVDs, the null-space walk's refactorisations)
# ten-fold, and the printed numbers then depend on the thread count. Setting the
# variable in the environment overrides this.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# The package is imported from the checkout (PYTHONPATH or ``pip install -e .``);
# put the repository root first so that the docs describe this very tree.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import skquant  # noqa: E402

# -- Project information ---------------------------------------------------------------

project = "skquant"
author = "The skquant developers"
copyright = "the skquant developers"  # noqa: A001
version = skquant.__version__
release = skquant.__version__

# -- General configuration -------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"
# Single backticks (`name`) render as inline code, as in scikit-learn's docs.
default_role = "literal"

# -- autodoc / autosummary / numpydoc --------------------------------------------------

autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_typehints = "none"
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Type lines ("ndarray of shape (n_in, n_out)") stay plain text: cross-linking every
# word of them would make a warning of each one intersphinx cannot resolve offline.
numpydoc_xref_param_type = False

# -- intersphinx -----------------------------------------------------------------------

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
intersphinx_timeout = 10
if os.environ.get("SKQUANT_DOCS_OFFLINE", "0") not in ("", "0"):
    intersphinx_mapping = {}

# References to other projects' objects (``:class:`~sklearn.pipeline.Pipeline```) are
# links when intersphinx is on and plain text when it is off; not nitpicky, so an
# unresolved Python reference is not a warning.
nitpicky = False

# -- doctest ---------------------------------------------------------------------------

doctest_global_setup = """
import numpy as np
"""

# -- sphinx-gallery --------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "doc_module": ("skquant",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"skquant": None},
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
}

# -- autodoc hooks ---------------------------------------------------------------------


def _skip_metadata_request_methods(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated ``set_{method}_request`` methods.

    scikit-learn adds them to every estimator whose ``fit`` or ``transform`` takes an
    argument other than ``X`` and ``y``; their docstrings refer to scikit-learn's
    glossary and user guide, which cannot be resolved offline.
    """
    if what == "class" and name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_request_methods)


# -- HTML ------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"skquant {release}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
