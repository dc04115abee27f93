"""Node-side scripts, installed as `mpibatch.launchers`: the programs an emulated or real Batch node
launches (coordinate.sh, persist.py; the local executor's node init and remote-shell agent). They run
with bash or the Python standard library only, and are shipped to Batch nodes as common resource files."""
from __future__ import annotations

from importlib import resources


def script_path(name: str) -> str:
    """Where the installed copy of a node-side script is."""
    path = resources.files(__name__) / name
    if not path.is_file():
        raise FileNotFoundError(f"mpibatch is installed without its node-side script {name}")
    return str(path)
