"""Sphinx configuration: the docstrings are reStructuredText with Google-style sections
(napoleon) and ``.. math::`` (MathJax); the narrative pages are Markdown (MyST)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

import sgdx

project = "sgdx"
release = version = sgdx.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx-mathjax-offline",  # MathJax served with the pages: they render without a network
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings' Args say what each takes, in words
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "furo"
html_title = f"sgdx {version}"

# Every public name: the package's __all__ and its public modules' __all__.
PUBLIC_MODULES = [
    "sgdx",
    "sgdx.schedules",
    "sgdx.conventions",
    "sgdx.sharding",
    "sgdx.interop.torch",
]


def public_names() -> list[str]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                names.append(f"{module_name}.{name}")
    return names


def undocumented(api_text: str) -> list[str]:
    """Public names that the API page does not list, or that have no docstring of their own."""
    listed = set(re.findall(r"^\s+(sgdx[\w.]*)\s*$", api_text, flags=re.M))
    missing = []
    for full in public_names():
        module_name, _, name = full.rpartition(".")
        obj = getattr(importlib.import_module(module_name), name)
        if inspect.isclass(obj):
            own_doc = obj.__doc__ if "__doc__" in vars(obj) else None
        elif inspect.isfunction(obj) or hasattr(obj, "__wrapped__"):  # functools.cache too
            own_doc = obj.__doc__
        else:  # a type alias: the docstring written under its assignment
            defined_in = getattr(sgdx, name, obj) is obj and module_name == "sgdx"
            source = "sgdx._base" if defined_in else module_name
            docs = ModuleAnalyzer.for_module(source).find_attr_docs()
            own_doc = "".join(docs.get(("", name), []))
        if full not in listed and f"{module_name.removeprefix('sgdx.')}.{name}" not in listed:
            missing.append(f"{full} (not on the API page)")
        elif not (own_doc or "").strip():
            missing.append(f"{full} (no docstring)")
    return missing


def check_coverage(app) -> None:
    api = (Path(app.srcdir) / "api.rst").read_text()
    missing = undocumented(api)
    if missing:
        raise RuntimeError("undocumented public names: " + ", ".join(missing))


def setup(app):
    app.connect("builder-inited", check_coverage)
