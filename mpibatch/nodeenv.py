"""A Batch node's directory layout and task environment (docs/batch-semantics.md#environment). Pure."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from .hostlist import format_ccp_nodes, format_host_list, format_node_list

MASTER_PORT = 6000  # the port Batch puts in AZ_BATCH_MASTER_NODE (the service's own)


@dataclass(frozen=True)
class NodeLayout:
    """Paths as the node sees them, for one task on a node rooted at `root`."""

    root: str
    job_id: str
    task_id: str

    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def startup(self) -> str:
        return f"{self.root}/startup"

    @property
    def job_dir(self) -> str:
        return f"{self.root}/workitems/{self.job_id}/job-1"

    @property
    def task_dir(self) -> str:
        return f"{self.job_dir}/{self.task_id}"

    @property
    def working_dir(self) -> str:
        return f"{self.task_dir}/wd"

    @property
    def task_shared_dir(self) -> str:
        # The same path on every instance; a local directory, not a network share.
        return f"{self.task_dir}/shared"

    def node_task_dir(self, name: str) -> str:
        """Directory of a job preparation / release task."""
        return f"{self.job_dir}/{name}"

    def dirs(self) -> list[str]:
        return [self.shared, self.startup, self.working_dir, self.task_shared_dir]


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
