"""`mpibatch emulate`: an offline Azure Batch endpoint - an EMULATOR, not the Azure Batch service.

It serves the Batch data-plane REST API on 127.0.0.1 (docs/emulator.md lists every operation: emulated,
partial or refused) so that unmodified Batch clients (azure-batch 14.2 and 15.1) run against it: Shared Key,
api-version, Batch's errors and limits, pools of emulated nodes with start tasks, jobs with preparation and
release tasks, ordinary and multi-instance tasks, resource and output files through Azurite.

    from mpibatch.emulator import Emulator
    with Emulator(port=0, pools_=[("pool", 2, 1)]) as emu:
        print(emu.env())
"""
from .core import Emulator

__all__ = ["Emulator"]
