"""The docs site builds with no warning, and its API reference covers every public name."""

from __future__ import annotations

import importlib
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every module of the public API, and the reference page that documents it.
PUBLIC = [
    "jaxreg",
    "jaxreg.masks",
    "jaxreg.optim",
    "jaxreg.optim.lr_scheduler",
    "jaxreg.prox",
    "jaxreg.flat",
    "jaxreg.checkpoint",
    "jaxreg.nn",
    "parity",
    "parity.convert",
]


def _public_names(modname):
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None)
    if names is None:  # no __all__: the module's own public functions and classes
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == modname
        ]
    out = []
    for n in names:
        if n.startswith("__") or isinstance(getattr(module, n), type(sys)):
            continue  # __version__; submodules have their own page
        out.append(f"{modname}.{n}")
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import sphinx  # noqa: F401  (the docs extra; the README's test command installs it)

    out = tmp_path_factory.mktemp("html")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-E",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


@pytest.mark.slow
def test_docs_build_without_warnings(built):
    proc, out = built
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.strip() == ""
    assert (out / "index.html").exists()


@pytest.mark.slow
def test_reference_documents_every_public_name(built):
    from sphinx.util.inventory import InventoryFile

    proc, out = built
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", posixpath.join)
    data = inv.data if hasattr(inv, "data") else inv
    documented = set().union(*(set(v) for v in data.values()))
    expected = [n for m in PUBLIC for n in _public_names(m)]
    assert len(expected) > 120  # the names are really collected
    missing = [n for n in expected if n not in documented]
    assert not missing, f"public names missing from the API reference: {missing}"
