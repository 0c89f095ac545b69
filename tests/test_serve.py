"""sopi-serve's library and CLI on real files: XA frames written with our writer into a watched
folder, registered in tracking mode, one JSON line per frame (rejected and failed ones included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import phantom_xa_case

from calib.writer import write_xa
from runtime import Registrar
from runtime.registration.metrics import reprojection_distance_mm
from runtime.serve import FolderSource, FrameRecord, JsonlSink, Service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    # the anatomy moves ~1 mm / 0.5 deg between frames, as in cine
    vol, intr, poses, frames = phantom_xa_case(d, [([1.0 + 0.5 * i, -1.0, 1.5], [3.0 + i, -2.0, 5.0])
                                                   for i in range(3)])
    return d, vol, intr, poses, frames


@pytest.fixture(scope="module")
def registrar(case):
    d, vol, intr, *_ = case
    reg = Registrar(vol, intr, backend="cpu")
    reg.warm_up()
    return reg


class ListSink:
    def __init__(self):
        self.records: list[FrameRecord] = []

    def write(self, rec):
        self.records.append(rec)


def _wait(pred, timeout=120.0):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_service_tracks_frames_and_answers_every_file(case, registrar, tmp_path):
    d, vol, intr, poses, frames = case
    watch = tmp_path / "in"
    watch.mkdir()
    sink, jsonl = ListSink(), JsonlSink(tmp_path / "out.jsonl")
    service = Service(registrar, [sink, jsonl], init="dicom")
    stop = threading.Event()
    th = threading.Thread(target=service.run, args=(stop, FolderSource(watch, poll_s=0.02, settle_s=0.05)))
    th.start()
    try:
        for i, src in enumerate(frames):  # atomic rename, as a DICOM receiver would write them
            (watch / f"f{i}.dcm.part").write_bytes(src.read_bytes())
            os.replace(watch / f"f{i}.dcm.part", watch / f"f{i}.dcm")
            _wait(lambda: len(sink.records) == i + 1)
        (watch / "junk.dcm").write_bytes(b"not dicom at all")
        _wait(lambda: len(sink.records) == 4)
    finally:
        stop.set()
        th.join(30)
        jsonl.close()
    recs = sink.records
    assert [r.seq for r in recs] == [0, 1, 2, 3]
    assert [r.start for r in recs[:3]] == ["dicom", "tracking", "tracking"]
    for r, T in zip(recs[:3], poses):
        assert r.outcome == "accepted" and r.reason == "" and r.frame_index == 0 and r.latency_ms > 0
        err = reprojection_distance_mm(np.array(r.result["pose"]), T, vol.mask_points(max_points=1000), intr)
        assert err < 1.0, err
    assert recs[3].outcome == "rejected" and "junk.dcm" in recs[3].reason and recs[3].result is None
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == [r.outcome for r in recs]
    assert lines[0]["result"]["pose"] == recs[0].result["pose"]


def test_reinitialises_after_frames_not_accepted(case, registrar):
    d, vol, intr, poses, frames = case
    sink = ListSink()
    service = Service(registrar, [sink], init="dicom", reinit_after=2)
    service.handle_file(frames[0])
    assert sink.records[-1].outcome == "accepted"
    blank = d / "blank.dcm"
    write_xa(blank, np.zeros((intr.height, intr.width), np.float32), intr, sod_mm=700.0)
    for _ in range(2):
        service.handle_file(blank)
    assert [r.start for r in sink.records[1:]] == ["tracking", "tracking"]
    assert all(r.outcome in ("not_accepted", "failed", "rejected") and r.reason for r in sink.records[1:])
    service.handle_file(frames[1])  # two misses in a row: start from the DICOM angles again
    assert sink.records[-1].start == "dicom" and sink.records[-1].outcome == "accepted"


def test_folder_source_waits_for_complete_files(tmp_path):
    src = FolderSource(tmp_path, poll_s=0.01, settle_s=0.05)
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "a.dcm.part").write_bytes(b"x" * 10)
    (tmp_path / "b.dcm").write_bytes(b"x" * 10)
    assert src.poll() == []                                   # first sight: not settled yet
    time.sleep(0.06)
    assert src.poll() == [tmp_path / "b.dcm"]                 # settled; .part and hidden never
    with open(tmp_path / "c.dcm", "wb") as fh:                # a slow writer
        fh.write(b"x")
        fh.flush()
        src.poll()
        time.sleep(0.06)
        fh.write(b"y" * 100)
        fh.flush()
        assert src.poll() == []                               # it changed: wait again
    time.sleep(0.06)
    assert src.poll() == [tmp_path / "c.dcm"] and src.poll() == []
    os.replace(tmp_path / "a.dcm.part", tmp_path / "a.dcm")  # renamed into place
    src.poll()
    time.sleep(0.06)
    assert src.poll() == [tmp_path / "a.dcm"]
    (tmp_path / "b.dcm").write_bytes(b"z" * 20)               # replaced: handed over again
    src.poll()
    time.sleep(0.06)
    assert src.poll() == [tmp_path / "b.dcm"]
    with pytest.raises(NotADirectoryError):
        FolderSource(tmp_path / "nope")


def test_records_never_hold_nan():
    rec = FrameRecord(0, "folder", "x.dcm", None, 1.0, float("nan"), "failed", "why",
                      result={"similarity": float("inf")})
    d = json.loads(rec.to_json())
    assert d["latency_ms"] is None and d["result"]["similarity"] is None


def _serve(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "runtime.cli.serve", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_serves_until_sigterm(case, tmp_path):
    d, vol, intr, poses, frames = case
    watch, out = tmp_path / "in", tmp_path / "poses.jsonl"
    watch.mkdir()
    (tmp_path / "serve.toml").write_text(f'ct = "{d / "ct.npz"}"\nbackend = "cpu"\npoll_s = 0.05\n')
    proc = _serve(["--config", str(tmp_path / "serve.toml"), "--watch", str(watch), "--jsonl", str(out)])
    try:
        (watch / "f0.dcm").write_bytes(frames[0].read_bytes())
        _wait(lambda: out.is_file() and out.read_text().count("\n") >= 1 or proc.poll() is not None, 300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["outcome"] == "accepted" and rec["start"] == "dicom"
    assert reprojection_distance_mm(np.array(rec["result"]["pose"]), poses[0], vol.mask_points(max_points=1000), intr) < 1.0
    assert "stopped: 1 frames" in err


@pytest.mark.parametrize("args,needle", [
    (["--watch", "."], "--ct is required"),
    (["--ct", "nope.npz", "--watch", "."], "CTLoadError"),
    (["--ct", "x", "--watch", ".", "--budget-ms", "0"], "budget"),
    (["--ct", "x", "--video", "carm.avi"], "--video needs --calib"),
    (["--ct", "x", "--video", "carm.avi", "--calib", "c.json"], "no positioner angles"),
    (["--ct", "x"], "no frame source"),
])
def test_cli_startup_errors_exit_2(args, needle):
    proc = _serve(args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and needle in err and "Traceback" not in err, err


def test_cli_config_unknown_key_exit_2(tmp_path):
    (tmp_path / "c.toml").write_text('ct = "x"\nwatch = "."\nport = 5\n')
    proc = _serve(["--config", str(tmp_path / "c.toml")])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "unknown keys ['port']" in err, err


# ----------------------------------------------------------------- DICOM C-STORE in, OpenIGTLink out
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dicom_store_in_openigtlink_out(case, registrar):
    pynetdicom = pytest.importorskip("pynetdicom")
    pyigtl = pytest.importorskip("pyigtl")
    import pydicom
    from pydicom.data import get_testdata_file
    from pynetdicom.sop_class import CTImageStorage, XRayAngiographicImageStorage

    from runtime.serve.dicom_scp import DicomReceiver
    from runtime.serve.igtl import RAS_TO_LPS, IgtlSink

    d, vol, intr, poses, frames = case
    sink, dport, iport = ListSink(), _free_port(), _free_port()
    igtl = IgtlSink(iport)
    service = Service(registrar, [sink, igtl], init="dicom")
    rx = DicomReceiver(service, dport, ae_title="SOPI", host="127.0.0.1", allowed_aes=["CARM"])
    stop = threading.Event()
    th = threading.Thread(target=service.run, args=(stop,))
    th.start()
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", iport)
    try:
        _wait(igtl.is_connected, 10)
        scu = pynetdicom.AE(ae_title="CARM")
        scu.add_requested_context(XRayAngiographicImageStorage)
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", dport, ae_title="SOPI")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(frames[0])).Status == 0x0000
        assert assoc.send_c_store(pydicom.dcmread(get_testdata_file("CT_small.dcm"))).Status == 0x0122
        bad = pydicom.dcmread(frames[1])
        bad.NumberOfFrames = 10 ** 8  # a header the reader refuses before decoding
        assert assoc.send_c_store(bad).Status == 0xC210
        assoc.release()
        msg = client.wait_for_message("CTToCArm", timeout=120)
        assert msg is not None
        T = np.asarray(msg.matrix, float) @ RAS_TO_LPS  # back to T_cam_from_ct (CT in LPS)
        assert reprojection_distance_mm(T, poses[0], vol.mask_points(max_points=1000), intr) < 1.0
        status = client.wait_for_message("SopiStatus", timeout=30)
        assert status is not None and "outcome=" in status.string
        # an AE title that is not allowed is not let in; an SCU that aborts mid-association is survived
        other = pynetdicom.AE(ae_title="INTRUDER")
        other.add_requested_context(XRayAngiographicImageStorage)
        assert not other.associate("127.0.0.1", dport, ae_title="SOPI").is_established
        assoc = scu.associate("127.0.0.1", dport, ae_title="SOPI")
        assoc.abort()
        assoc = scu.associate("127.0.0.1", dport, ae_title="SOPI")
        assert assoc.send_c_store(pydicom.dcmread(frames[1])).Status == 0x0000
        assoc.release()
        _wait(lambda: len(sink.records) == 4, 120)
    finally:
        stop.set()
        th.join(60)
        client.stop()
        rx.close()
        igtl.close()
    by_outcome = sorted(r.outcome for r in sink.records)
    assert by_outcome == ["accepted", "accepted", "rejected", "rejected"], [(r.outcome, r.reason) for r in sink.records]
    rejected = [r for r in sink.records if r.outcome == "rejected"]
    assert all(r.source == "dicom:CARM" for r in sink.records)
    assert any("DicomSOPClassError" in r.reason for r in rejected) and any("Number of Frames" in r.reason
                                                                          for r in rejected)


def test_full_inbox_drops_the_oldest_with_a_record(case, registrar):
    from runtime.serve.inbox import Item

    d, vol, intr, poses, frames = case
    sink = ListSink()
    service = Service(registrar, [sink], init="dicom", inbox_size=1)
    service.submit(Item(frames[0], "folder", "a"))
    service.submit(Item(frames[1], "folder", "b"))   # a is dropped: latest frame wins
    assert [(r.source_id, r.outcome) for r in sink.records] == [("a", "dropped")]
    stop = threading.Event()
    stop.set()                                       # stopping at once: b is recorded as dropped too
    service.run(stop)
    assert [(r.source_id, r.outcome) for r in sink.records] == [("a", "dropped"), ("b", "dropped")]
    assert "stopped" in sink.records[1].reason


# ----------------------------------------------------------------- video grabber
def test_video_file_drives_the_service(case, registrar, tmp_path):
    """A C-arm's display output as a video file (written with OpenCV: air bright, bone dark, a round
    field in black borders, MJPG): every captured frame gets one record; the poses match."""
    import cv2

    from calib.calibration import Calibration
    from runtime.serve.video import VideoSource
    from runtime.synthetic.frames import synthesize_frame

    d, vol, intr, poses, frames = case
    H, W = intr.height, intr.width
    rr, cc = np.mgrid[:H, :W]
    field = (rr - H / 2) ** 2 + (cc - W / 2) ** 2 < (0.46 * W) ** 2
    path = str(tmp_path / "carm.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (W, H), isColor=False)
    for T in poses:
        intensity = np.exp(-synthesize_frame(vol, intr, T, i0=np.inf).line_integrals)
        gray = np.where(field, 30.0 + 215.0 * intensity / intensity[field].max(), 0.0).astype(np.uint8)  # windowed
        writer.write(gray)
    writer.release()
    sink = ListSink()
    service = Service(registrar, [sink], init=poses[0] @ np.eye(4), inbox_size=1)  # no DICOM angles in video
    stop = threading.Event()
    th = threading.Thread(target=service.run, args=(stop,))
    th.start()
    src = VideoSource(service, path, Calibration(intrinsics=intr), pace_fps=2.0)
    try:
        assert src.finished.wait(60)
        _wait(lambda: len(sink.records) == src.captured, 120)
    finally:
        stop.set()
        th.join(60)
        src.close()
    assert src.captured == 3 and sorted(r.source_id for r in sink.records) == ["frame 0", "frame 1", "frame 2"]
    registered = [r for r in sink.records if r.outcome in ("accepted", "not_accepted")]
    assert registered and all(r.outcome == "accepted" for r in registered), [(r.outcome, r.reason) for r in sink.records]
    for r in registered:
        T = poses[int(r.source_id.split()[1])]
        assert reprojection_distance_mm(np.array(r.result["pose"]), T, vol.mask_points(max_points=1000), intr) < 1.0
    assert all(r.outcome == "dropped" for r in sink.records if r not in registered)


def test_openigtlink_client_disconnects_and_reconnects(case, registrar):
    pyigtl = pytest.importorskip("pyigtl")
    from runtime.serve.igtl import IgtlSink

    d, vol, intr, poses, frames = case
    port = _free_port()
    igtl = IgtlSink(port)
    service = Service(registrar, [igtl], init="dicom")
    try:
        for i in range(2):  # a client comes, gets a pose, goes; the next one gets the next pose
            client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
            _wait(igtl.is_connected, 10)
            service.handle_file(frames[i])
            msg = client.wait_for_message("CTToCArm", timeout=60)
            client.stop()
            assert msg is not None
            _wait(lambda: not igtl.is_connected(), 10)
        service.handle_file(frames[2])  # nobody connected: nothing queued, nothing blocks
    finally:
        igtl.close()
    assert service.counts["accepted"] == 3


@pytest.mark.parametrize("kind", ["corrupt_nifti", "truncated_npz", "mask_grid"])
def test_cli_ct_that_fails_to_load_exit_2(case, tmp_path, kind):
    """A CT (or mask) that exists but cannot be loaded: one error line naming the file, exit 2,
    nothing served."""
    ct = case[0] / "ct.npz"
    args = ["--ct", str(ct), "--watch", str(tmp_path)]
    if kind == "corrupt_nifti":
        bad = tmp_path / "ct.nii.gz"
        bad.write_bytes(b"\x1f\x8b" + b"not a gzip stream" * 10)
        args[1] = str(bad)
    elif kind == "truncated_npz":
        bad = tmp_path / "ct.npz"
        bad.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])
        args[1] = str(bad)
    else:
        bad = tmp_path / "mask.npz"
        np.savez(bad, data=np.zeros((5, 6, 7), np.uint8), affine=np.eye(4))
        args += ["--mask", str(bad)]
    proc = _serve(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "CTLoadError" in err and str(bad) in err and "Traceback" not in err, err
    assert out.strip() == ""


def test_overlay_image_over_openigtlink(case, registrar):
    """Service(overlay=True): after the TRANSFORM of an accepted frame, an IMAGE '<device>Overlay'
    (1, H, W, 3) uint8 with the DRR's edges in green over the frame, pixel size as spacing."""
    pyigtl = pytest.importorskip("pyigtl")
    from runtime.serve.igtl import IgtlSink

    d, vol, intr, poses, frames = case
    port = _free_port()
    igtl = IgtlSink(port, device_name="Spine")
    service = Service(registrar, [igtl], init="dicom", overlay=True)
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    try:
        _wait(igtl.is_connected, 10)
        rec = service.handle_file(frames[0])[0]
        assert rec.outcome == "accepted", rec.reason
        assert client.wait_for_message("Spine", timeout=30) is not None
        msg = client.wait_for_message("SpineOverlay", timeout=30)
    finally:
        client.stop()
        igtl.close()
    assert msg is not None
    img = np.asarray(msg.image)
    f = rec.result["levels"][-1]
    assert img.shape == (1, intr.height // f, intr.width // f, 3) and img.dtype == np.uint8
    green = (img[0, :, :, 1] == 255) & (img[0, :, :, 0] == 0) & (img[0, :, :, 2] == 0)
    assert green.sum() > 50  # the DRR's edges
    np.testing.assert_allclose(np.diag(msg.ijk_to_world_matrix)[:2], [intr.du_mm * f, intr.dv_mm * f], rtol=1e-5)


def test_cli_overlay_needs_openigtlink():
    proc = _serve(["--ct", "x", "--watch", ".", "--igtl-overlay"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--igtl-overlay needs --igtl-port" in err, err
