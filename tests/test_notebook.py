"""The tutorial notebook (notebooks/own_data.ipynb) runs top to bottom, its code cells in order in one namespace,
as a kernel would run them, with a training budget of seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "own_data.ipynb"


def test_tutorial_notebook_runs_from_folder_to_coco(tmp_path, monkeypatch):
    monkeypatch.setenv("RLESEG_TUTORIAL_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("RLESEG_TUTORIAL_MINUTES", "0.1")
    monkeypatch.chdir(tmp_path)  # the notebook changes directory; monkeypatch changes it back
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] for c in cells), "commit the notebook without outputs"
    namespace: dict = {}
    for index, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}, code cell {index}", "exec"), namespace)
    work = tmp_path / "work"
    assert (work / "cells.yaml").is_file() and (work / "runs" / "cells" / "best.safetensors").is_file()
    assert isinstance(namespace["results"], list)
    assert len(list((work / "predicted").rglob("cell_0*.png"))) >= 8
    assert namespace["label_map"].shape == (160, 192) and set(np.unique(namespace["label_map"])) <= {0, 1}
    assert 0 <= namespace["scores"]["mean_without_background"]["dice"] <= 1
