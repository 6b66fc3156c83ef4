"""The notebooks run top to bottom, so they never rot."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# What each notebook must leave behind, and a line its output must contain.
EXPECTED = {
    "averaging.ipynb": ("runs/averaging/soup.keras", "greedy soup saved: "),
    "quickstart.ipynb": ("runs/quickstart/best.keras", "best: "),
    "resume.ipynb": (
        "runs/resume/keras_ckpt.json",
        "largest weight difference from the uninterrupted run: 0.0\n",
    ),
    "schedules.ipynb": (None, "peak rate: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot was not drawn"
    artifact, line = EXPECTED[path.name]
    if artifact is not None:
        assert (tmp_path / artifact).exists()
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert line in text, text


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)
