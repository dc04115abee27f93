"""The autoscale formula language of `mpibatch emulate` (mpibatch/emulator/autoscale_syntax.py, autoscale.py),
per "Create an automatic formula for scaling compute nodes in a Batch pool": the doc's own example formulas, the
functions, sample operations and their InsufficientSampleData error, syntax errors with line and column;
and the pool's formula evaluated again on its evaluation interval, on the emulator's own task counts."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mpibatch.emulator.autoscale import Samples, evaluate
from mpibatch.emulator.autoscale_syntax import SAMPLED, FormulaError
from tests.infra.batch_emulator import BatchEmulator

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def samples(count: int, **values: float) -> Samples:
    """`count` samplings 30 s apart, the last one now."""
    one = {v: 0.0 for v in SAMPLED} | {f"${k}": x for k, x in values.items()}
    return Samples([(NOW - timedelta(seconds=30 * i), dict(one)) for i in range(count)][::-1])


def test_the_docs_pending_tasks_example() -> None:
    formula = """
    startingNumberOfVMs = 1;
    maxNumberofVMs = 25;
    pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
    pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs : avg($PendingTasks.GetSample(180 *
        TimeInterval_Second));
    $TargetDedicatedNodes = min(maxNumberofVMs, pendingTaskSamples);
    $NodeDeallocationOption = taskcompletion;"""
    targets, results = evaluate(formula, samples(7, PendingTasks=9), {"$CurrentDedicatedNodes": 0}, {}, NOW)
    assert targets == {"$TargetDedicatedNodes": 9, "$TargetLowPriorityNodes": 0,
                       "$NodeDeallocationOption": "taskcompletion"}
    assert results.startswith("$TargetDedicatedNodes=9;$TargetLowPriorityNodes=0;"
                              "$NodeDeallocationOption=taskcompletion;startingNumberOfVMs=1;maxNumberofVMs=25;")
    few, _ = evaluate(formula, samples(2, PendingTasks=9), {}, {}, NOW)  # under 70% of the samples: 1 node
    assert few["$TargetDedicatedNodes"] == 1


def test_functions_vectors_and_operators() -> None:
    formula = ("v = {4, 1, 3}; a = avg(v); m = max(v) - min(v); p = percentile(v, 50); s = sum(v, 2); n = len(v);"
               "r = round(2.5) + floor(1.9) + ceil(0.1); l = lg(8) + log(100); c = 3 > 2 && !(1 == 2) ? 10 : 20;"
               "$TargetDedicatedNodes = val(v, 0) * 2 - n;")
    targets, results = evaluate(formula, samples(1), {}, {}, NOW)
    assert targets["$TargetDedicatedNodes"] == 5
    assert "a=2.6666666666666665;m=3;p=3;s=10;n=3;r=5;l=5;c=10" in results


def test_sample_operations_and_the_current_counts() -> None:
    data = samples(4, ActiveTasks=5, RunningTasks=2)
    scalars = {"$CurrentDedicatedNodes": 3.0, "$TaskSlotsPerNode": 2.0}
    targets, results = evaluate(
        "n = $ActiveTasks.Count(); last = $ActiveTasks.GetSample(1); period = $ActiveTasks.GetSamplePeriod();"
        "$TargetDedicatedNodes = max($RunningTasks.GetSample(2)) + $CurrentDedicatedNodes * $TaskSlotsPerNode;",
        data, scalars, {}, NOW)
    assert targets["$TargetDedicatedNodes"] == 8
    assert "n=4;last=[5];period=30s" in results
    with pytest.raises(FormulaError) as e:
        evaluate("$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 80));", data, {}, {},
                 NOW)
    assert e.value.code == "InsufficientSampleData" and "wanted 80%, received 20%" in str(e.value)
    assert "Line 1, Col 29" in str(e.value)


def test_a_formula_that_does_not_set_a_target_keeps_it_and_stop_ends_it() -> None:
    targets, _ = evaluate("x = 1;", samples(1), {}, {"$TargetDedicatedNodes": 4.0}, NOW)
    assert targets["$TargetDedicatedNodes"] == 4 and targets["$NodeDeallocationOption"] == "requeue"
    targets, _ = evaluate("$TargetDedicatedNodes = 2; stop(); $TargetDedicatedNodes = 9;", samples(1), {}, {}, NOW)
    assert targets["$TargetDedicatedNodes"] == 2


@pytest.mark.parametrize("formula, where", [
    ("$TargetDedicatedNodes = = 1;", "Line 1, Col 25"),
    ("x = 1;\n$TargetDedicatedNodes = (2;", "Line 2, Col 27"),
    ("$CurrentDedicatedNodes = 3;", "Line 1, Col 1"),  # read-only
    ("$TargetDedicatedNodes = 1 # 2;", "Line 1, Col 27"),
])
def test_syntax_errors_name_line_and_column(formula: str, where: str) -> None:
    with pytest.raises(FormulaError) as e:
        evaluate(formula, samples(1), {}, {}, NOW)
    assert e.value.code == "InvalidAutoScaleFormula" and e.value.where == where


def test_evaluation_errors() -> None:
    for formula in ("$TargetDedicatedNodes = nope;", "$TargetDedicatedNodes = 1 / 0;",
                    "$TargetDedicatedNodes = frob(1);", "$NodeDeallocationOption = sometimes;"):
        with pytest.raises(FormulaError):
            evaluate(formula, samples(1), {}, {}, NOW)


def test_the_pool_is_evaluated_again_on_its_interval(tmp_path: Path) -> None:
    """The formula runs at enable time and again when its interval has passed (the test moves the pool's
    next evaluation to now instead of waiting 5 minutes), seeing tasks added in between."""
    from azure.batch import BatchClient
    from azure.batch import models as m
    from azure.core.credentials import AzureNamedKeyCredential

    emu = BatchEmulator(tmp_path).start()
    try:
        client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
        client.create_pool(m.BatchPoolCreateOptions(
            id="as", vm_size="standard_d2s_v3", enable_auto_scale=True,
            auto_scale_formula="$TargetDedicatedNodes = min(3, $ActiveTasks.GetSample(1)) + 1;",
            auto_scale_evaluation_interval=timedelta(minutes=5)))
        first = client.get_pool("as").auto_scale_run
        assert first.results.startswith("$TargetDedicatedNodes=1;")  # a pool made with autoscale: run at once
        deadline = time.monotonic() + 10
        while client.get_pool("as").current_dedicated_nodes != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get_pool("as").current_dedicated_nodes == 1
        for node in client.list_nodes("as"):  # the tasks below stay active: they are what the formula counts
            client.disable_node_scheduling("as", node.id, m.BatchNodeDisableSchedulingOptions(
                node_disable_scheduling_option="requeue"))
        pool = emu.emu.store.pools["as"]
        assert 290 < pool["_autoscale_next"] - time.time() <= 300  # the next evaluation: 5 minutes on
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="as")))
        for i in range(2):
            client.create_task("j", m.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true"))
        time.sleep(1.5)
        assert client.get_pool("as").auto_scale_run.timestamp == first.timestamp  # not before it is due
        pool["_autoscale_next"] = time.time()  # the 5 minutes have passed
        deadline = time.monotonic() + 10
        while client.get_pool("as").auto_scale_run.timestamp == first.timestamp and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get_pool("as").auto_scale_run.results.startswith("$TargetDedicatedNodes=3;")
        while client.get_pool("as").current_dedicated_nodes != 3 and time.monotonic() < deadline + 10:
            time.sleep(0.2)
        assert client.get_pool("as").current_dedicated_nodes == 3
    finally:
        emu.stop()
