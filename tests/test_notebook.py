"""notebooks/incident_response.ipynb runs top to bottom against a small simulated database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from incident import simulated_db
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tokentrail.investigate import load_alert, pick_alert
from tokentrail.store import Store

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "incident_response.ipynb"


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_the_committed_notebook_holds_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_from_alert_to_containment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = simulated_db(tmp_path)
    with Store.open(db, read_only=True) as store:
        alert = load_alert(store.conn, alert_id=pick_alert(store.conn))
    assert alert.token_id is not None
    # The kernel is this interpreter, whatever kernelspecs the machine has (a fresh `.venv`
    # is not activated when `make test` runs it, so a spec naming `python` could find another).
    kernels = tmp_path / "kernels"
    (kernels / "tokentrail").mkdir(parents=True)
    (kernels / "tokentrail" / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "tokentrail",
                "language": "python",
            }
        )
    )
    manager = KernelManager(
        kernel_name="tokentrail", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    monkeypatch.setenv("TOKENTRAIL_NOTEBOOK_DB", str(db))
    monkeypatch.delenv("ALERT_ID", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, km=manager, timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError at the first cell that fails

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert f"investigating alert {alert.alert_id}" in _text(code[1])
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # blast radius bars, timeline, reach graph
    (containment,) = [c for c in code if "containment = inv.containment" in c.source]
    shown = _text(containment)
    assert alert.token_id in shown
    assert "revoke" in shown
