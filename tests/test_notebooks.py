"""The committed notebooks: valid, executed (readers on a web page see the outputs), under 1 MB, and they use
the library instead of redefining it. (Executing them is nbmake's job: pytest collects notebooks/ too.)"""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted(p for p in (Path(__file__).parent.parent / "notebooks").rglob("*.ipynb") if "runs" not in p.parts)


def test_the_teaching_path_is_complete():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_tour", "01_vision_encoder", "02_connector", "03_prompts_and_format", "04_hd_grid", "05_training",
            "06_evaluation"} <= names
    assert len([p for p in NOTEBOOKS if p.parent.name == "exercises"]) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook(path):
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size / 1e6:.2f} MB"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "re-run python notebooks/execute.py"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("minillava" in c.source for c in code)
    assert not any(line.startswith(("def build_connector", "def tokenize_conversation", "def choose_grid"))
                   for c in code for line in c.source.splitlines())
