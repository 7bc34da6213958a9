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


# What a reader must not meet in a committed output: warnings, this machine's paths, object reprs.
NOT_IN_OUTPUTS = ("Warning:", "/root/", "/home/", "/tmp/", "/work/", ".cache/minillava", " at 0x")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_clean_and_figures_legible(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            text = out.get("text", "") + "".join(out.get("data", {}).get("text/plain", ""))
            found = [s for s in NOT_IN_OUTPUTS if s in text]
            assert not found, f"{path.name}, code cell {i}: {found} in {text[:200]!r}"
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if "plt." in source:  # figures at dpi >= 100 (set once at the top)
        assert "figure.dpi" in source and int(source.split('"figure.dpi"] = ')[1].split()[0]) >= 100
