"""Our preparers for azure-batch 15.1.0's `tests/test_batch.py`, in place of its `batch_preparers.py`
(which makes accounts and pools through Azure Resource Manager): with the same names and arguments,

- AccountPreparer: a fresh `mpibatch emulate` per test (its own state dir; Azurite as auto-storage when a
  StorageAccountPreparer is above it), Shared Key, reached at `https://127.0.0.1:<port>` through
  `devtools_testutils.proxy_testcase`;
- PoolPreparer: the pool the original makes (admin user `task-user`, the Ubuntu 22.04 or Windows image, an
  inbound NAT pool), created through the data plane and waited for until every node is idle;
- JobPreparer: a job on that pool, else on an auto pool, created through the data plane and deleted after.
"""
from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import azure.batch
from azure.batch import models
from azure.core.credentials import AzureNamedKeyCredential
from devtools_testutils import AzureMgmtPreparer, AzureTestError, FakeResource, proxy_testcase

from tests.infra.emulator import EmulatorProcess, wait_for

BATCH_ACCOUNT_PARAM = "batch_account"
STORAGE_ACCOUNT_PARAM = "storage_account"
RUN_DIR_ENV = "MPIBATCH_SDK_SUITE_DIR"
POOL_READY_S = 120
FakeAccount = namedtuple("FakeAccount", ["name", "account_endpoint"])


def _client(**kwargs: Any) -> Any:
    """A sync client of the test's emulator, straight to its HTTP address (the preparers' own calls)."""
    try:
        return azure.batch.BatchClient(kwargs["batch_emulator_endpoint"], kwargs["credential"])
    except KeyError:
        raise AzureTestError("a pool or job needs an account: put @AccountPreparer above it") from None


class AccountPreparer(AzureMgmtPreparer):
    def __init__(self, name_prefix: str = "batch", location: str = "westus", **kwargs: Any) -> None:
        super().__init__(name_prefix)
        self.emulator: EmulatorProcess | None = None

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        account = re.sub("[^a-z0-9]", "", name.lower())[:24]
        base = Path(os.environ.get(RUN_DIR_ENV) or tempfile.gettempdir())
        state = Path(tempfile.mkdtemp(prefix=f"{account}-", dir=base))
        storage = "auto" if kwargs.get(STORAGE_ACCOUNT_PARAM) else "none"
        self.emulator = EmulatorProcess(state / "state", storage=storage, account=account).start()
        public = self.emulator.endpoint.replace("http://", "https://", 1)
        proxy_testcase.route(public, self.emulator.endpoint)
        credential = AzureNamedKeyCredential(self.emulator.account, self.emulator.key)
        self.test_class_instance.batch_credential = credential
        return {BATCH_ACCOUNT_PARAM: FakeAccount(name=account, account_endpoint=public), "credential": credential,
                "batch_emulator_endpoint": self.emulator.endpoint}

    def remove_resource(self, name: str, **kwargs: Any) -> None:
        if self.emulator is not None:
            proxy_testcase.unroute(self.emulator.endpoint.replace("http://", "https://", 1))
            self.emulator.stop()
            self.emulator = None


def _image(os_name: str) -> tuple[models.BatchVmImageReference, str]:
    if os_name == "Windows":
        return (models.BatchVmImageReference(publisher="MicrosoftWindowsServer", offer="WindowsServer",
                                             sku="2016-Datacenter-smalldisk"), "batch.node.windows amd64")
    return (models.BatchVmImageReference(publisher="Canonical", offer="0001-com-ubuntu-server-jammy",
                                         sku="22_04-lts"), "batch.node.ubuntu 22.04")


class PoolPreparer(AzureMgmtPreparer):
    def __init__(self, name_prefix: str = "", size: int = 0, os: str = "Linux",  # noqa: A002 - upstream's name
                 pool_name: str | None = None, parameter_name: str = "batch_pool", **kwargs: Any) -> None:
        super().__init__(name_prefix)
        self.size = size
        self.os = os
        self.pool_name = pool_name
        self.parameter_name = parameter_name

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        pool_id = self.pool_name or name
        image, agent = _image(self.os)
        user = models.UserAccount(name="task-user", password=secrets.token_urlsafe(12),
                                  elevation_level=models.ElevationLevel.ADMIN)
        nat = models.BatchInboundNatPool(name="ruleName", protocol=models.InboundEndpointProtocol.TCP,
                                         backend_port=3389, frontend_port_range_start=15000,
                                         frontend_port_range_end=15100)
        pool = models.BatchPoolCreateOptions(
            id=pool_id, display_name="test_pool", vm_size="standard_d2_v2", user_accounts=[user],
            virtual_machine_configuration=models.VirtualMachineConfiguration(image_reference=image,
                                                                             node_agent_sku_id=agent),
            target_dedicated_nodes=self.size,
            network_configuration=models.NetworkConfiguration(
                endpoint_configuration=models.BatchPoolEndpointConfiguration(inbound_nat_pools=[nat])))
        with _client(**kwargs) as client:
            client.create_pool(pool)
            wait_for(f"pool {pool_id}: steady, {self.size} idle nodes", lambda: self._ready(client, pool_id),
                     timeout=POOL_READY_S)
        return {self.parameter_name: FakeResource(name=pool_id, id=pool_id)}

    def _ready(self, client: Any, pool_id: str) -> bool:
        pool = client.get_pool(pool_id)
        nodes = list(client.list_nodes(pool_id))
        return (pool.allocation_state == models.AllocationState.STEADY and len(nodes) == self.size
                and all(n.state == models.BatchNodeState.IDLE for n in nodes))


class JobPreparer(AzureMgmtPreparer):
    def __init__(self, name_prefix: str = "batch", parameter_name: str = "batch_job",
                 batch_pool_parameter_name: str = "batch_pool", **extra_args: Any) -> None:
        super().__init__(name_prefix)
        self.parameter_name = parameter_name
        self.batch_pool_parameter_name = batch_pool_parameter_name
        self.extra_args = {k: v for k, v in extra_args.items()
                           if k not in ("disable_recording", "playback_fake_resource", "client_kwargs")}

    def _pool_info(self, **kwargs: Any) -> models.BatchPoolInfo:
        if self.batch_pool_parameter_name in kwargs:
            return models.BatchPoolInfo(pool_id=kwargs[self.batch_pool_parameter_name].name)
        image, agent = _image("Linux")
        return models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
            pool_lifetime_option=models.BatchPoolLifetimeOption.JOB,
            pool=models.BatchPoolSpecification(vm_size="standard_d2_v2",
                                               virtual_machine_configuration=models.VirtualMachineConfiguration(
                                                   image_reference=image, node_agent_sku_id=agent))))

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        job = models.BatchJobCreateOptions(id=name, pool_info=self._pool_info(**kwargs), **self.extra_args)
        with _client(**kwargs) as client:
            client.create_job(job)
        return {self.parameter_name: FakeResource(name=name, id=name)}

    def remove_resource(self, name: str, **kwargs: Any) -> None:
        deadline = time.monotonic() + 60
        with _client(**kwargs) as client:
            client.begin_delete_job(name, polling_interval=1).result(timeout=max(1, deadline - time.monotonic()))
