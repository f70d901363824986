"""Runbooks and scaling: the notebooks under `notebooks/` run by papermill (`runner`), the
helpers those notebooks use (`notebook`, `charts`), and worker scaling through the Ansible
playbooks under `playbooks/` (`scaling`, `pool`)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PLAYBOOKS = ROOT / "playbooks"
INVENTORIES = ROOT / "inventories"
