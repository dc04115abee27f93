"""A Batch node's task environment (docs/batch-semantics.md#environment), over the node layout of
launchers/protocol.py. Pure."""
from __future__ import annotations

import functools
from collections.abc import Sequence

from .hostlist import format_ccp_nodes, format_host_list, format_node_list
from .launchers.protocol import NodeLayout  # the layout is the node protocol's (launchers/protocol.py)

MASTER_PORT = 6000  # the port Batch puts in AZ_BATCH_MASTER_NODE (the service's own)


@functools.lru_cache(maxsize=16)
def _host_vars(hosts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return (("AZ_BATCH_HOST_LIST", format_host_list(hosts)), ("AZ_BATCH_NODE_LIST", format_node_list(hosts)),
            ("CCP_NODES", format_ccp_nodes(hosts, 1)), ("AZ_BATCH_MASTER_NODE", f"{hosts[0]}:{MASTER_PORT}"))


def host_vars(hosts: Sequence[str]) -> dict[str, str]:
    """The variables naming every node of the task. The same on every instance: the list is validated and
    formatted once per task, not once per node and phase (N x N host checks: 12,000 at 64 nodes)."""
    return dict(_host_vars(tuple(hosts)))


def batch_env(layout: NodeLayout, *, hosts: Sequence[str], index: int, node_id: str, pool_id: str,
              account: str = "local", account_url: str = "http://127.0.0.1/local",
              task_dir: str | None = None) -> dict[str, str]:
    """The variables Batch sets for instance `index` of a multi-instance task, in Batch's formats.
    `task_dir` overrides the task directory (job preparation / release tasks)."""
    tdir = task_dir or layout.task_dir
    return {
        "AZ_BATCH_ACCOUNT_NAME": account,
        "AZ_BATCH_ACCOUNT_URL": account_url,
        "AZ_BATCH_POOL_ID": pool_id,
        "AZ_BATCH_NODE_ID": node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true",
        "AZ_BATCH_NODE_ROOT_DIR": layout.root,
        "AZ_BATCH_NODE_SHARED_DIR": layout.shared,
        "AZ_BATCH_NODE_STARTUP_DIR": layout.startup,
        "AZ_BATCH_JOB_ID": layout.job_id,
        "AZ_BATCH_TASK_ID": layout.task_id if task_dir is None else tdir.rsplit("/", 1)[-1],
        "AZ_BATCH_TASK_DIR": tdir,
        "AZ_BATCH_TASK_WORKING_DIR": f"{tdir}/wd",
        "AZ_BATCH_TASK_SHARED_DIR": layout.task_shared_dir,
        **host_vars(hosts),
        "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if index == 0 else "false",
    }


__all__ = ["MASTER_PORT", "NodeLayout", "batch_env"]
