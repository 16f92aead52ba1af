"""
Tests of demo.ipynb: the committed notebook carries the outputs of a real run (a teacher previews it without
running it), and it runs top to bottom in its short form (the parameters cell set to a few steps), so it
cannot rot. Needs nbclient and ipykernel (requirements-dev.txt).

    python -m pytest -q test_demo.py
"""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_committed_notebook_shows_a_real_run():
    """Every code cell has outputs, pictures among them (curves, spectra, the seeds), and no placeholder."""
    nb = nbformat.read(os.path.join(HERE, "demo.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code), [c.source[:40] for c in code if not c.outputs]
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    text = "".join(c.source for c in nb.cells) + "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "step 600/600" in text and "--- llr" in text  # the defaults' run
    for placeholder in ("<this repository>", "_LINE", "TODO", "%cd"):
        assert placeholder not in text


def test_notebook_runs_in_its_short_form(tmp_path):
    nb = nbformat.read(os.path.join(HERE, "demo.ipynb"), as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code" and "max_steps =" in c.source)
    params.source = params.source.replace("max_steps = 600", "max_steps = 20").replace(
        '"out/notebook"', repr(str(tmp_path / "nb")))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": HERE}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # 20 steps: LLR recomputes at steps 0-4 (every step of its 20% window); the last is printed
    assert "--- uniform" in text and "--- llr" in text and "step 4:" in text and "gate" in text
    assert "LLR - uniform:" in text  # the three seeds, read from the committed run files
    assert len(images) == 3  # the curves, the spectra and the seeds
    assert (tmp_path / "nb" / "llr" / "ckpt.pt").exists()
