"""A local STAND-IN for the Azure Batch REST API, for mpibatch's tests. It is NOT the Batch service.

See server.py: a small threaded HTTP server on 127.0.0.1 that answers the documented Batch REST
endpoints mpibatch uses, checks Shared Key signatures and api-version like the service, and runs each
task with mpibatch's local executor (real MPI ranks, resource files really fetched, outputs really
uploaded to Azurite).
"""
from tests.batch_standin.server import BatchStandIn, RequestRecord

__all__ = ["BatchStandIn", "RequestRecord"]
