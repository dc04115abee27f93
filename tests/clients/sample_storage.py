"""The storage side of the samples' equivalents (tests/clients/samples_equivalents*.py), for either SDK
generation: blobs addressed as the samples address them - a blob URL with a read SAS for a resource file, a
container URL with a write SAS for output files."""
import datetime

from azure.storage.blob import BlobServiceClient, generate_blob_sas, generate_container_sas

UTC = datetime.timezone.utc


class Storage:
    def __init__(self, conn):
        self.service = BlobServiceClient.from_connection_string(conn)
        parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        self.account, self.key = parts["AccountName"], parts["AccountKey"]

    def _container(self, name):
        c = self.service.get_container_client(name)
        if not c.exists():
            c.create_container()
        return c

    def upload(self, container, name, text):
        """Upload `text`; the blob's URL with a read SAS of an hour."""
        c = self._container(container)
        c.upload_blob(name, text.encode(), overwrite=True)
        sas = generate_blob_sas(self.account, container, name, account_key=self.key, permission="r",
                                expiry=datetime.datetime.now(UTC) + datetime.timedelta(hours=1))
        return f"{c.url}/{name}?{sas}"

    def container_sas_url(self, container):
        c = self._container(container)
        sas = generate_container_sas(self.account, container, account_key=self.key, permission="w",
                                     expiry=datetime.datetime.now(UTC) + datetime.timedelta(hours=1))
        return f"{c.url}?{sas}"

    def read(self, container, name):
        return self.service.get_blob_client(container, name).download_blob().readall().decode()
