"""What `pip install .` installs: every package of the library, so the spike doctor works outside
the repo (a subpackage left out of pyproject.toml installs a library that cannot import)."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_library_package_is_installed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "spikelab").rglob("__init__.py")}
    assert on_disk == listed, f"pyproject.toml [tool.setuptools] packages must list {sorted(on_disk)}"
