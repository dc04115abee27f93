"""One redaction module: passwords in URLs, SAS query strings, SAS parameters in exception texts.

Pure tests of mpibatch.redaction, then the places a URL reaches a message: a resource file download that
fails (real urllib, loopback only), the render table, and the CLI's error lines.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mpibatch.cli import main
from mpibatch.redaction import MASK, redact, redact_url
from mpibatch.spec import FileRef

SAS = "sv=2024-11-04&se=2030-01-01T00%3A00%3A00Z&sr=b&sp=r&sig=SECRETSIG%2Babc%3D"


def test_redact_url_masks_password_and_every_query_value() -> None:
    out = redact_url(f"https://alice:hunter2@files.example.com/a/b.tar.gz?{SAS}")
    assert "hunter2" not in out and "SECRETSIG" not in out and "2030" not in out
    assert out.startswith(f"https://alice:{MASK}@files.example.com/a/b.tar.gz?sv={MASK}&se={MASK}")
    assert redact_url("https://example.com/plain/path") == "https://example.com/plain/path"
    assert redact_url("https://bob@example.com/x") == "https://bob@example.com/x"  # a user name is no secret


@pytest.mark.parametrize("url", ["https://acct.blob.core.windows.net/c/my file.txt?" + SAS,
                                 "http://[::1/broken?" + SAS, "https://h:99999/x?" + SAS, "not a url?" + SAS])
def test_redact_url_never_raises_on_malformed_urls(url: str) -> None:
    assert "SECRETSIG" not in redact_url(url)


def test_redact_text_finds_urls_stray_sas_parameters_and_named_secrets() -> None:
    # What http.client.InvalidURL says about a SAS URL with a space: the path and query, no scheme.
    invalid = f"URL can't contain control characters. '/c/my file.txt?{SAS}' (found at least ' ')"
    assert "SECRETSIG" not in redact(invalid) and "sig=" + MASK in redact(invalid)
    text = "GET https://u:pw123@h.example/x?sig=ABC, then key=ACCOUNTKEY== failed."
    out = redact(text, "ACCOUNTKEY==")
    assert "pw123" not in out and "ABC" not in out and "ACCOUNTKEY" not in out
    assert out.endswith(", then key=<redacted> failed.")  # the sentence around the URL is kept


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_resource_file_with_a_space_in_its_sas_url_fails_cleanly(tmp_path: Path) -> None:
    """urllib raises http.client.InvalidURL (an HTTPException) quoting the query: a failure line, no secret."""
    from mpibatch.executors.resource_files import FilesError, download

    ref = FileRef(source=f"http://127.0.0.1:{_closed_port()}/c/my file.txt?{SAS}", path="my file.txt")
    with pytest.raises(FilesError) as e:
        download(ref, tmp_path)
    assert "SECRETSIG" not in str(e.value) and "resource file my file.txt" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_resource_file_failure_line_hides_the_password(tmp_path: Path) -> None:
    from mpibatch.executors.resource_files import FilesError, download

    ref = FileRef(source=f"http://alice:hunter2@127.0.0.1:{_closed_port()}/data.bin?{SAS}", path="data.bin")
    with pytest.raises(FilesError) as e:
        download(ref, tmp_path)
    assert "hunter2" not in str(e.value) and "SECRETSIG" not in str(e.value)
    assert f"alice:{MASK}@127.0.0.1" in str(e.value)


def _spec(tmp_path: Path, source: str) -> Path:
    (tmp_path / "app.py").write_text("print('hi')\n")
    spec = {"job": {"id": "redact", "pool": "p"},
            "task": {"id": "t", "instances": 2, "mpi": {"flavor": "mpich"}, "command": ["python3", "app.py"],
                     "common_files": [{"source": "app.py", "path": "app.py"}, {"source": source, "path": "in.dat"}],
                     "environment": {"DATA_URL": source}}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_render_table_hides_passwords_and_sas_everywhere(tmp_path: Path) -> None:
    url = f"https://alice:hunter2@files.example.com/in.dat?{SAS}"
    res = CliRunner().invoke(main, ["render", str(_spec(tmp_path, url))])
    assert res.exit_code == 0, res.output
    assert "hunter2" not in res.stdout and "SECRETSIG" not in res.stdout
    assert f"alice:{MASK}@files.example.com/in.dat" in res.stdout
    assert "DATA_URL" in res.stdout  # the environment row is there, its value redacted


def test_cli_error_lines_are_redacted(tmp_path: Path) -> None:
    """An error quoting a bad URL (here: a scheme mpibatch does not download) never shows its secrets."""
    res = CliRunner().invoke(main, ["render", str(_spec(tmp_path, f"ftp://alice:hunter2@h.example/x?{SAS}"))])
    assert res.exit_code == 2, res.output
    assert "hunter2" not in res.output and "SECRETSIG" not in res.output
