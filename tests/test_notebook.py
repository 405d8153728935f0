"""notebooks/inspect_run.ipynb runs on a finished run and redraws three figures from its arrays."""
from __future__ import annotations

import json

import pytest

from conftest import REPO, compose_config

NOTEBOOK = REPO / "notebooks" / "inspect_run.ipynb"


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e .[test]")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "EIRNN_RUN_DIR" in code[0].source


@pytest.mark.slow
def test_notebook_runs_on_an_exported_run(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e .[test]")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e .[test]")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra: pip install -e .[test]")
    import torch

    from eirnn.export import export_run
    from eirnn.train import train

    run = tmp_path / "run"
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_config(["data.synthetic.n_trials=40", "model.n_hidden=4", "logger=none", "trainer.max_epochs=2",
                              "callbacks.figures.every_n_epochs=0", "optim.lr=2e-4"], run)
        train(cfg)
        export_run(run, cfg=cfg, figures=False, n_pcs=4)
    finally:
        torch.set_num_threads(n_threads)
    figs = tmp_path / "figs"
    monkeypatch.setenv("EIRNN_RUN_DIR", str(run))
    monkeypatch.setenv("EIRNN_NOTEBOOK_FIGURES", str(figs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "recomputed per-neuron correlations match" in text and "recomputed PCA matches" in text
    best = json.loads((run / "metrics.json").read_text())["best"]["val/psth_corr"]
    assert f"mean {best:.4f}" in text
    assert sorted(p.name for p in figs.glob("*.png")) == ["best_worst_neurons.png", "correlation_histogram.png",
                                                          "pca_trajectories.png"]
