"""Re-execute every notebook in place, so the committed outputs (figures, tables) are fresh.

    python notebooks/execute.py                 # all notebooks, full budgets
    python notebooks/execute.py 04_hd_grid.ipynb
    MINILLAVA_FAST=1 python notebooks/execute.py  # the small budgets the test suite uses (tests/conftest.py)

Each notebook runs in its own folder (``notebooks/``), as Jupyter would; run folders go to ``notebooks/runs/``
(git-ignored). Notebooks must stay under 1 MB each: the script says so if one grows past it.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def tidy(nb) -> None:
    """Keep what a terminal would show of progress bars: consecutive stream outputs joined, and of each line
    rewritten with carriage returns only its last state (else every tqdm update is stored)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and outputs and outputs[-1].output_type == "stream" \
                    and outputs[-1].name == out.name:
                outputs[-1].text += out.text
            else:
                outputs.append(out)
        for out in outputs:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip("\r").split("\r")[-1] for line in out.text.split("\n"))
        cell["outputs"] = outputs


def main(names: list[str]) -> None:
    paths = [HERE / n for n in names] or sorted(HERE.glob("*.ipynb")) + sorted(HERE.glob("exercises/**/*.ipynb"))
    for path in paths:
        start = time.time()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})  # run in the notebook's folder
        client.execute()
        tidy(nb)
        nbformat.write(nb, path)
        size = path.stat().st_size
        print(f"{path.relative_to(HERE)}: {time.time() - start:.0f} s, {size / 1e6:.2f} MB"
              + ("  <-- over 1 MB" if size > 1e6 else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
