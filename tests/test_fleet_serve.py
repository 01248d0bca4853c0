"""The operator's archive server (fleet/serve.py) over real HTTP: whole files, byte ranges for a
resumed download, the errors a device can meet, and the device's own downloader resuming a
broken-off download against it."""
import hashlib
import urllib.error
import urllib.request

import pytest

from medge.edge.fleet.download import download
from medge.fleet.serve import ArchiveServer


def get(url: str, headers: dict | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture
def served(tmp_path):
    archive = tmp_path / "bundle.tar"
    archive.write_bytes(bytes(range(256)) * 1000)  # 256,000 bytes, every offset distinguishable
    with ArchiveServer(archive, "127.0.0.1", 0) as server:
        yield server, archive.read_bytes()


def test_whole_file_ranges_and_errors(served):
    server, data = served
    url = server.url("127.0.0.1")
    status, headers, body = get(url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    status, headers, body = get(url, {"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:] and headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    status, _, body = get(url, {"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    status, _, body = get(url, {"Range": "bytes=-5"})
    assert status == 206 and body == data[-5:]
    status, headers, body = get(url, method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(data))
    with pytest.raises(urllib.error.HTTPError) as beyond:
        get(url, {"Range": f"bytes={len(data)}-"})
    assert beyond.value.code == 416
    with pytest.raises(urllib.error.HTTPError) as elsewhere:
        get(f"http://127.0.0.1:{server.port}/other.tar")
    assert elsewhere.value.code == 404


def test_the_devices_downloader_resumes_a_broken_off_download(served, tmp_path):
    server, data = served
    dest = tmp_path / "device" / "archive.tar"
    dest.parent.mkdir()
    (dest.parent / "archive.tar.part").write_bytes(data[:100_000])  # what a power cut left
    got = download(server.url("127.0.0.1"), dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert got.read_bytes() == data
    assert server.requests[-1] == ("GET", "bundle.tar", "bytes=100000-", 206)


def test_deploy_warns_when_the_hosted_copy_is_not_the_packed_archive(served, tmp_path):
    from medge.fleet.bundle import PackedBundle
    from medge.fleet.deploy import hosted_copy_problem

    server, data = served
    url = server.url("127.0.0.1")
    packed = PackedBundle(archive=tmp_path / "bundle.tar", name="m", version="2", sha256="0" * 64, size=len(data),
                          artifacts=(), signed=True)
    assert hosted_copy_problem(url, packed) is None
    stale = PackedBundle(**{**packed.__dict__, "size": len(data) + 1})
    assert f"serves {len(data)} bytes, the archive packed from the bundle has {len(data) + 1}" in hosted_copy_problem(
        url, stale)
    assert hosted_copy_problem(f"http://127.0.0.1:{server.port}/gone.tar", packed).startswith("cannot check")
