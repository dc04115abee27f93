"""Focused tests of the emulator defects azure-batch 15.1.0's own test file found (tests/test_sdk_suite.py
runs that file): exit conditions and a job's performExitOptionsJobAction, container tasks (stored, never
run), replacing a job that has an auto pool, a schedule's first job at once, the logs of a program that
cannot start, subnet and image ids, node logs uploaded after the answer, and 15.1's Shared Key form."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess, wait_for
from tests.infra.rawbatch import API, request

pytestmark = [pytest.mark.azure]
VM = "standard_d2s_v3"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(tmp_path / "state", storage="none", pools=("p:1",)).start()
    try:
        yield emu
    finally:
        emu.stop()


def _completed(client: Any, job: str, task: str) -> Any:
    return wait_for(f"{job}/{task} completed", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task(job, task)), timeout=30)


def test_exit_conditions_decide_the_job_and_the_dependents(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = emulator.batch_client()
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"),
                                              uses_task_dependencies=True,
                                              task_failure_mode=m.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION))
    # exit code 3 is mapped to "satisfy, no job action": its dependent runs, the job stays active
    soft = m.ExitConditions(exit_code_ranges=[m.ExitCodeRangeMapping(start=2, end=4, exit_options=m.ExitOptions(
        job_action=m.BatchJobActionKind.NONE, dependency_action=m.DependencyAction.SATISFY))])
    client.create_task("j", m.BatchTaskCreateOptions(id="a", command_line="/bin/sh -c 'exit 3'", exit_conditions=soft))
    client.create_task("j", m.BatchTaskCreateOptions(id="b", command_line="/bin/true",
                                                     depends_on=m.BatchTaskDependencies(task_ids=["a"])))
    assert _completed(client, "j", "a").execution_info.exit_code == 3
    assert _completed(client, "j", "b").execution_info.result == "success"
    got = client.get_task("j", "a").exit_conditions
    assert got.exit_code_ranges[0].exit_options.dependency_action == "satisfy"
    assert client.get_job("j").state == "active"
    # no mapping for exit code 1: the default for a failure is terminate, with the service's reason
    client.create_task("j", m.BatchTaskCreateOptions(id="c", command_line="/bin/false"))
    wait_for("job terminated", lambda: client.get_job("j").state == "completed")
    assert client.get_job("j").execution_info.termination_reason == "TaskFailed"


def test_a_job_action_needs_a_job_that_performs_exit_options(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError

    client = emulator.batch_client()
    client.create_job(m.BatchJobCreateOptions(id="plain", pool_info=m.BatchPoolInfo(pool_id="p")))
    with pytest.raises(HttpResponseError) as info:
        client.create_task("plain", m.BatchTaskCreateOptions(id="t", command_line="/bin/true", exit_conditions=(
            m.ExitConditions(default=m.ExitOptions(job_action=m.BatchJobActionKind.DISABLE)))))
    assert info.value.error.code == "InvalidPropertyValue"
    assert "performExitOptionsJobAction" in str(info.value)
    assert list(client.list_tasks("plain")) == []


def test_a_container_task_is_stored_without_its_password_and_fails_when_it_would_run(
        emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = emulator.batch_client()
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    registry = m.ContainerRegistryReference(username="me", password="s3cret-pw")
    client.create_task("j", m.BatchTaskCreateOptions(id="c", command_line="/bin/true",
                                                     container_settings=m.BatchTaskContainerSettings(
                                                         image_name="ubuntu:22.04", registry=registry)))
    t = _completed(client, "j", "c")
    assert t.container_settings.image_name == "ubuntu:22.04" and t.container_settings.registry.username == "me"
    assert t.container_settings.registry.password is None
    assert t.execution_info.result == "failure" and t.execution_info.exit_code is None
    assert t.execution_info.failure_info.code == "NotSupportedByEmulator"
    assert "no container runtime" in t.execution_info.failure_info.message
    # a job manager task the same way; the job does not keep the password either
    client.create_job(m.BatchJobCreateOptions(id="jm", pool_info=m.BatchPoolInfo(pool_id="p"),
                                              job_manager_task=m.BatchJobManagerTask(
                                                  id="manager", command_line="/bin/true",
                                                  container_settings=m.BatchTaskContainerSettings(
                                                      image_name="ubuntu:22.04", registry=registry))))
    assert _completed(client, "jm", "manager").execution_info.failure_info.code == "NotSupportedByEmulator"
    assert client.get_job("jm").job_manager_task.container_settings.registry.password is None
    assert not any("s3cret-pw" in line for line in emulator.log)


def test_replacing_a_job_with_an_auto_pool_updates_keep_alive_only(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = emulator.batch_client()
    spec = m.BatchAutoPoolSpecification(pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
                                        pool=m.BatchPoolSpecification(vm_size=VM))
    client.create_job(m.BatchJobCreateOptions(id="auto", pool_info=m.BatchPoolInfo(auto_pool_specification=spec)))
    pool_id = client.get_job("auto").execution_info.pool_id
    spec.keep_alive = True
    spec.pool = m.BatchPoolSpecification(vm_size="standard_other")
    client.replace_job("auto", m.BatchJob(priority=7, pool_info=m.BatchPoolInfo(auto_pool_specification=spec)))
    job = client.get_job("auto")
    assert job.priority == 7 and job.execution_info.pool_id == pool_id
    assert job.pool_info.auto_pool_specification.keep_alive is True
    assert job.pool_info.auto_pool_specification.pool.vm_size == VM  # only keepAlive can change


def test_a_schedule_due_now_has_its_job_when_the_add_is_answered(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = emulator.batch_client()
    client.create_job_schedule(m.BatchJobScheduleCreateOptions(
        id="s", schedule=m.BatchJobScheduleConfiguration(), job_specification=m.BatchJobSpecification(
            pool_info=m.BatchPoolInfo(pool_id="p"))))
    assert [j.id for j in client.list_jobs_from_schedule("s")] == ["s:job-1"]


def test_a_program_that_cannot_start_still_has_its_logs(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = emulator.batch_client()
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line='cmd /c "echo hello"'))
    assert _completed(client, "j", "t").execution_info.failure_info.code == "CommandProgramNotFound"
    files = {f.name for f in client.list_task_files("j", "t") if not f.is_directory}
    assert files == {"stdout.txt", "stderr.txt"}


def test_subnets_and_malformed_image_ids_are_refused(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError

    client = emulator.batch_client()
    subnet = "/subscriptions/0/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    image = "/subscriptions/0/resourceGroups/g/providers/Microsoft.Compute/galleries/gal/images/img"
    vm = m.VirtualMachineConfiguration(image_reference=m.BatchVmImageReference(virtual_machine_image_id=image),
                                       node_agent_sku_id="batch.node.ubuntu 22.04")
    bad = {"subnetId": dict(network_configuration=m.NetworkConfiguration(subnet_id=subnet)),
           "virtualMachineImageId": dict(virtual_machine_configuration=m.VirtualMachineConfiguration(
               image_reference=m.BatchVmImageReference(virtual_machine_image_id=image.replace("galleries", "gallery")),
               node_agent_sku_id="batch.node.ubuntu 22.04"))}
    for prop, extra in bad.items():
        with pytest.raises(HttpResponseError) as info:
            client.create_pool(m.BatchPoolCreateOptions(id="bad", vm_size=VM, **extra))
        assert info.value.error.code == "InvalidPropertyValue" and prop in str(info.value)
    client.create_pool(m.BatchPoolCreateOptions(id="img", vm_size=VM, virtual_machine_configuration=vm))
    assert {p.id for p in client.list_pools()} == {"img", "p"}  # a well-formed image id is taken


def test_node_logs_are_answered_at_once_and_a_failed_upload_is_logged(emulator: EmulatorProcess) -> None:
    from datetime import datetime, timezone

    from azure.batch import models as m

    client = emulator.batch_client()
    [node] = list(client.list_nodes("p"))
    # a container URL of this machine where nothing listens: the upload fails after the answer
    result = client.upload_node_logs("p", node.id, m.UploadBatchServiceLogsOptions(
        container_url="http://127.0.0.1:9/logs?sig=SECRETSIG", start_time=datetime.now(timezone.utc)))
    assert result.number_of_files_uploaded == 1 and result.virtual_directory_name.startswith(f"p/{node.id}/")
    line = emulator.wait_log(r"node logs .*upload failed", timeout=30)
    assert "SECRETSIG" not in "\n".join(emulator.log) and line


def test_a_query_name_with_capitals_signed_as_15_1_signs_it(emulator: EmulatorProcess) -> None:
    """azure-batch 15.1 signs `timeOut` as it is sent; the documented form lower-cases it: both are taken."""
    client = emulator.batch_client()
    assert client.get_pool("p", timeout=30).id == "p"  # 15.1's own Shared Key policy, its own form
    query = f"api-version={API}&timeOut=30"
    assert request(emulator.endpoint, emulator.account, emulator.key, "GET", "/pools/p", query=query).status == 200
    wrong = base64.b64encode(b"w" * 64).decode()  # either form still needs the account's key
    assert request(emulator.endpoint, emulator.account, wrong, "GET", "/pools/p", query=query).status == 403


def test_certificates_are_refused_as_retired_in_every_version(emulator: EmulatorProcess) -> None:
    e = emulator
    for version in ("2018-12-01.8.0", "2024-07-01.20.0", "2025-06-01"):
        for method, path in (("GET", "/certificates"), ("POST", "/certificates"),
                             ("DELETE", "/certificates(thumbprintAlgorithm=sha1,thumbprint=ab12)"),
                             ("POST", "/certificates(thumbprintAlgorithm=sha1,thumbprint=ab12)/canceldelete")):
            answer = request(e.endpoint, e.account, e.key, method, path, query=f"api-version={version}")
            assert (answer.status, answer.code) == (400, "FeatureRetired"), (version, method, path)
            assert "retired" in answer.json()["message"]["value"]
    # a pool naming certificates, in a version whose model still has them: refused with the same reason
    body = json.dumps({"id": "certs", "vmSize": VM, "certificateReferences": [
        {"thumbprint": "ab12", "thumbprintAlgorithm": "sha1"}]}).encode()
    answer = request(e.endpoint, e.account, e.key, "POST", "/pools", body, query="api-version=2024-02-01.19.0")
    assert (answer.status, answer.code) == (400, "InvalidPropertyValue") and "retired" in answer.body.decode()
    assert {p.id for p in e.batch_client().list_pools()} == {"p"}


def test_application_packages_of_the_command_line_are_listed_and_installed(tmp_path: Path) -> None:
    import subprocess
    import zipfile

    from azure.batch import models as m

    package = tmp_path / "tool.zip"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("bin/data.txt", "from the package\n")
    emu = EmulatorProcess(tmp_path / "state", storage="none", pools=("p:1",),
                          extra_args=("--application", f"my-tool:2.1.b={package}")).start()
    try:
        client = emu.batch_client()
        apps = list(client.list_applications())
        assert [(a.id, a.versions) for a in apps] == [("my-tool", ["2.1.b"])]
        assert client.get_application("MY-TOOL").id == "my-tool"
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        read = ('/bin/sh -c \'cat "$AZ_BATCH_APP_PACKAGE_my_tool_2_1_b/bin/data.txt" '
                '"$AZ_BATCH_APP_PACKAGE_my_tool/bin/data.txt"\'')
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=read, application_package_references=[
            m.BatchApplicationPackageReference(application_id="my-tool", version="2.1.b"),
            m.BatchApplicationPackageReference(application_id="my-tool")]))
        client.create_task("j", m.BatchTaskCreateOptions(id="missing", command_line="/bin/true",
                                                         application_package_references=[
                                                             m.BatchApplicationPackageReference(application_id="nope")]))
        assert _completed(client, "j", "t").execution_info.exit_code == 0
        out = b"".join(client.download_task_file("j", "t", "stdout.txt"))
        assert out == b"from the package\n" * 2
        failed = _completed(client, "j", "missing").execution_info
        assert failed.result == "failure" and failed.failure_info.code == "ApplicationPackageNotFound"
        # a pool's packages: on every node as it joins, named in the environment of the tasks there
        ref = m.BatchApplicationPackageReference(application_id="my-tool", version="2.1.b")
        client.create_pool(m.BatchPoolCreateOptions(id="withapp", vm_size=VM, target_dedicated_nodes=1,
                                                    application_package_references=[ref]))
        client.create_pool(m.BatchPoolCreateOptions(id="noapp", vm_size=VM, target_dedicated_nodes=1,
                                                    application_package_references=[
                                                        m.BatchApplicationPackageReference(application_id="nope")]))
        wait_for("withapp idle", lambda: [n for n in client.list_nodes("withapp") if n.state == "idle"])
        [bad] = wait_for("noapp unusable", lambda: [n for n in client.list_nodes("noapp") if n.state == "unusable"])
        assert bad.errors[0].code == "ApplicationPackageNotFound"
        client.create_job(m.BatchJobCreateOptions(id="j2", pool_info=m.BatchPoolInfo(pool_id="withapp")))
        client.create_task("j2", m.BatchTaskCreateOptions(
            id="t", command_line='/bin/sh -c \'cat "$AZ_BATCH_APP_PACKAGE_my_tool_2_1_b/bin/data.txt"\''))
        assert _completed(client, "j2", "t").execution_info.exit_code == 0
        assert b"".join(client.download_task_file("j2", "t", "stdout.txt")) == b"from the package\n"
    finally:
        emu.stop()
    for bad in ("no-equals", "x:1=/no/such/file", f"bad name={package}"):
        proc = subprocess.run([str(emu.args[0]), "emulate", "--port", "0", "--storage", "none", "--application", bad],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and "--application" in proc.stderr, (bad, proc.stderr)
