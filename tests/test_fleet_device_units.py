"""The device side of fleet rollout, piece by piece, on real files, real keys, a real HTTP
server and the committed bundles: commands, archives, resumable downloads, the store's atomic
pointer, the self-test and the start-up fallback. (The daemons: tests/test_fleet_device.py.)"""
from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from medge.edge.bundle import sha256_file
from medge.edge.classify import Classifier
from medge.edge.config import load_config
from medge.edge.errors import BundleError
from medge.edge.fleet.archive import pack_bundle, unpack_bundle
from medge.edge.fleet.commands import CommandError, new_command, sign_command, verify_command
from medge.edge.fleet.controller import startup_bundle
from medge.edge.fleet.download import DownloadError, download
from medge.edge.fleet.selftest import run_self_test
from medge.edge.fleet.store import BundleStore, Entry
from medge.edge.schemas import payload_problem
from tests.fixtures.fleet import FolderServer, make_candidate, make_keys, pack


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def candidate(int8_bundle, keys, tmp_path_factory):
    return make_candidate(int8_bundle, tmp_path_factory.mktemp("c") / "v2", version="2", key=keys["bundle"])


def test_a_command_verifies_only_when_signed_by_a_trusted_key_for_this_device_and_in_time(keys):
    payload = new_command(action="rollback", site="icu", device="xr-1", rollout="r-7")
    signed = sign_command(payload, keys["operator"])
    assert payload_problem("command", signed) is None
    command = verify_command(json.dumps(signed).encode(), [keys["operator_pub"]], "icu", "xr-1")
    assert command.action == "rollback" and command.rollout == "r-7" and command.bundle is None
    refusals = {
        "bad signature": (dict(signed, rollout="r-8"), "icu", "xr-1", None),
        "not a trusted operator key": (sign_command(payload, keys["stranger"]), "icu", "xr-1", None),
        "this device is icu/xr-2": (signed, "icu", "xr-2", None),
        "expired": (signed, "icu", "xr-1", datetime.now(UTC) + timedelta(days=2)),
        "malformed": ({k: v for k, v in signed.items() if k != "action"}, "icu", "xr-1", None),
        "a deploy command needs a bundle": (sign_command(dict(payload, action="deploy"), keys["operator"]),
                                            "icu", "xr-1", None),
        "not valid JSON": (b"{not json", "icu", "xr-1", None),
    }
    for expected, (raw, site, device, now) in refusals.items():
        with pytest.raises(CommandError, match=expected):
            verify_command(raw, [keys["operator_pub"]], site, device, now=now)


def test_an_archive_is_deterministic_and_unpacking_takes_plain_files_only(candidate, tmp_path):
    assert pack_bundle(candidate) == pack_bundle(candidate)
    unpacked = unpack_bundle(pack(candidate, tmp_path), tmp_path / "out")
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(p.name for p in candidate.iterdir())
    for name, build in {"../evil": lambda info: None, "link": lambda info: setattr(info, "type", tarfile.SYMTYPE)}.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(name)
            build(info)
            info.linkname = "/etc/passwd"
            archive.addfile(info, io.BytesIO(b""))
        (tmp_path / "bad.tar").write_bytes(buffer.getvalue())
        with pytest.raises(BundleError, match="refusing"):
            unpack_bundle(tmp_path / "bad.tar", tmp_path / f"bad-{len(name)}")
        assert not (tmp_path / f"bad-{len(name)}").exists()


def test_a_dropped_download_resumes_with_range_and_a_wrong_or_oversized_file_is_refused(candidate, tmp_path):
    archive = pack(candidate, tmp_path / "served")
    sha, size = sha256_file(archive), archive.stat().st_size
    with FolderServer(archive.parent) as server:
        server.cut_after[archive.name] = size // 3
        got = download(server.url_of(archive), tmp_path / "dl" / "a.tar", sha256=sha, size=size)
        assert sha256_file(got) == sha and not (tmp_path / "dl" / "a.tar.part").exists()
        ranges = server.ranges(archive.name)
        assert ranges[0] is None and ranges[1] == f"bytes={size // 3}-", ranges
        with pytest.raises(DownloadError, match="does not match the sha256"):
            download(server.url_of(archive), tmp_path / "dl" / "b.tar", sha256="0" * 64, size=size)
        with pytest.raises(DownloadError, match="larger than"):
            download(server.url_of(archive), tmp_path / "dl" / "c.tar", sha256=sha, size=size - 10)
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(server.url_of(tmp_path / "missing.tar"), tmp_path / "dl" / "d.tar", sha256=sha, size=size)


def test_the_pointer_survives_a_crash_mid_write_and_keeps_the_previous_bundle(tmp_path, int8_bundle, candidate):
    store = BundleStore(tmp_path / "fleet")
    old = Entry(path=str(int8_bundle), name="pneumonia-cnn", version="1", sha256="a" * 64)
    new = Entry(path=str(candidate), name="pneumonia-cnn", version="2", sha256="b" * 64, archive_sha256="c" * 64)
    assert store.read_pointer() is None
    pointer = store.activate(new, old, "r1", "cmd1")
    assert store.read_pointer() == pointer and pointer.previous == old
    # power lost while the next pointer was being written: the temporary file is half there
    (store.root / "active.json.tmp").write_text('{"active": {"path": "/nowhere"')
    assert store.read_pointer().active == new
    # the same command again after a restart keeps the previous bundle
    assert store.activate(new, new, "r1", "cmd1").previous == old


def test_the_self_test_passes_on_this_runtime_and_catches_changed_expected_scores(candidate, keys, tmp_path,
                                                                                  int8_bundle):
    from medge.edge.bundle import load_bundle

    result = run_self_test(Classifier(load_bundle(candidate)))
    assert result.passed and result.inputs >= 8 and result.max_abs_diff <= result.tolerance, result.reason
    broken = make_candidate(int8_bundle, tmp_path / "broken", version="3", key=keys["bundle"], expected_shift=0.1)
    result = run_self_test(Classifier(load_bundle(broken, trusted_keys=[keys["bundle_pub"]])))
    assert not result.passed and result.max_abs_diff > result.tolerance, result.reason
    older = make_candidate(int8_bundle, tmp_path / "older", version="0", key=keys["bundle"], self_test=False)
    assert run_self_test(Classifier(load_bundle(older))) is None  # made before bundles carried one
    if load_bundle(int8_bundle).manifest.self_test:  # the one `medge convert` wrote, run here
        assert run_self_test(Classifier(load_bundle(int8_bundle))).passed


def test_the_daemon_starts_with_the_store_bundle_and_falls_back_when_it_is_damaged(tmp_path, keys, candidate,
                                                                                   int8_bundle):
    first = make_candidate(int8_bundle, tmp_path / "v1", version="1", key=keys["bundle"])
    config = load_config(flags={"bundle": str(first), "fleet.trusted_operator_keys": str(keys["operator_pub"]),
                                "signature.trusted_keys": str(keys["bundle_pub"]), "state.dir": str(tmp_path / "s")})
    assert startup_bundle(config).version == "1"
    store = BundleStore(tmp_path / "s" / "fleet")
    store.activate(Entry(path=str(candidate), name="pneumonia-cnn", version="2", sha256="x"),
                   Entry(path=str(first), name="pneumonia-cnn", version="1", sha256="y"), "r", "c")
    assert startup_bundle(config).version == "2"
    model = next(candidate.glob("*.tflite"))
    original = model.read_bytes()
    model.write_bytes(original[:-10])  # the active bundle damaged on disk: the previous one runs
    try:
        assert startup_bundle(config).version == "1"
    finally:
        model.write_bytes(original)


def test_the_pacs_writer_uses_the_model_that_classified_each_input_across_a_switch(int8_bundle, onnx_bundle,
                                                                                   tmp_path):
    """A DICOM input's SR/SC are written after its result, maybe after a fleet switch: the
    finding and the heatmap's model must be the one its result names (model.sha256)."""
    from medge.edge.bundle import load_bundle
    from medge.edge.daemon import model_info
    from medge.edge.pacs.delivery import PacsDelivery
    from medge.edge.pacs.delivery_queue import DeliveryQueue
    from medge.edge.sources.base import InputItem
    from medge.edge.worker import ActiveModel

    def active(folder) -> ActiveModel:
        classifier = Classifier(load_bundle(folder))
        return ActiveModel(classifier=classifier, bundle=classifier.bundle,
                           info=model_info(classifier.bundle, classifier.artifact))

    started, switched = active(int8_bundle), active(onnx_bundle)
    assert started.info["sha256"] != switched.info["sha256"]
    delivery = PacsDelivery([], DeliveryQueue(tmp_path / "pacs.sqlite3"), finding="start-up", device="d1")
    try:
        delivery.remember(started)  # what the daemon does at start
        item = InputItem(source="dicom", ref="x", load=lambda: None, dataset=object())
        delivery.observe(item, None, switched, [])  # the worker's observer, on the first input after the switch
        for model in (started, switched):  # a job queued before the switch is written after it
            finding, classifier = delivery.model_of([{"model": model.info}])
            assert classifier is model.classifier and finding == model.bundle.positive_class
        assert delivery.model_of([{"model": {"sha256": "0" * 64}}]) == ("start-up", None)  # unknown: no heatmap
    finally:
        delivery.queue.close()
