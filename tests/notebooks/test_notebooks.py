"""The notebooks run top to bottom, in order, on one small workspace (as a person would)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


KERNEL = "adplatform-tests"


@pytest.fixture(scope="module")
def nb_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks") / "ws"


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec for this interpreter, so the notebooks run in the project's venv."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernel")
    install(kernel_name=KERNEL, prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, nb_home: Path, kernel_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("ADPLATFORM_HOME", str(nb_home))
    monkeypatch.setenv("NB_SCALE", "small")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, nb_home.parent / path.name)      # the executed copy, to look at
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    if any("plt." in c.source for c in nb.cells if c.cell_type == "code"):
        assert images, f"{path.name} draws plots but rendered none"
    if path.stem == "06_ab_report":        # it points to the report page, with its plots
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []) if o.get("name") == "stdout")
        html = next(Path(line) for line in text.splitlines()
                    if line.startswith("/") and line.endswith(".html"))
        assert html.exists() and html.read_text().count("data:image/png;base64,") >= 3
    assert os.environ["NB_SCALE"] == "small"
