"""Helpers for the DICOM tests: external validators/creators (dicom3tools, dcmtk), real test files,
and a synthetic Enhanced XA writer. Nothing here is shipped; data files are never committed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SOPI_TESTDATA_CACHE", REPO / ".cache"))
DEID_VERSION = "0.0.20"
CAT_MEMBER = f"deid-data-{DEID_VERSION}/deid_data/data/animals/cat.dcm"


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = "dicom3tools" if name.startswith("dc") and name not in ("dcmodify", "dcmdump") else "dcmtk"
        pytest.skip(f"{name} not found: apt-get install -y --no-install-recommends {pkg}")
    return path


def dciodvfy(path: str | Path) -> tuple[list[str], list[str], str]:
    """Run dicom3tools' IOD validator: (error lines, warning lines, IOD name line)."""
    exe = need_binary("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + "\n" + out.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warns = [ln for ln in lines if ln.startswith("Warning")]
    iod = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith(("Error", "Warning"))), "")
    return errors, warns, iod


def run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stdout}\n{out.stderr}")


def pydicom_test_file(rel: str) -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / rel


def pydicom_data_file(name: str) -> Path:
    try:
        import data_store  # noqa: F401  (pydicom-data)
    except ImportError:
        pytest.skip("pydicom-data not installed (pip install pydicom-data)")
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"{name} not available from pydicom-data")
    return Path(p)


def deid_cat() -> Path:
    """deid-data's cat.dcm (real Agfa DX), extracted once from the sdist into the cache."""
    out = CACHE / "deid" / CAT_MEMBER
    if out.is_file():
        return out
    tarballs = sorted((CACHE / "deid").glob(f"deid-data-{DEID_VERSION}.tar.gz")) if (CACHE / "deid").is_dir() else []
    if not tarballs:
        (CACHE / "deid").mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"deid-data=={DEID_VERSION}",
                            "-d", str(CACHE / "deid")], capture_output=True, timeout=300, check=True)
        except Exception as exc:
            pytest.skip(f"deid-data sdist not available (pip download --no-deps deid-data=={DEID_VERSION} "
                        f"-d {CACHE / 'deid'}): {exc}")
        tarballs = sorted((CACHE / "deid").glob(f"deid-data-{DEID_VERSION}.tar.gz"))
        if not tarballs:
            pytest.skip("deid-data download produced no sdist")
    with tarfile.open(tarballs[0]) as tf:
        member = tf.getmember(CAT_MEMBER)
        tf.extract(member, CACHE / "deid", filter="data")
    return out


def make_xa_dcmtk(tmp: Path, image8: np.ndarray, *, sid: str = "1011.7", ips: str = "0.79836\\0.79836",
                  primary: str = "-30", secondary: str = "20", sod: str = "700", extra: list[str] = ()) -> Path:
    """An XA object built only with dcmtk: img2dcm (BMP -> Secondary Capture) + dcmodify."""
    import cv2

    img2dcm = need_binary("img2dcm")
    dcmodify = need_binary("dcmodify")
    bmp = tmp / "frame.bmp"
    cv2.imwrite(str(bmp), np.ascontiguousarray(image8, dtype=np.uint8))
    out = tmp / "xa_dcmtk.dcm"
    run([img2dcm, "-i", "BMP", str(bmp), str(out)])
    ins = {
        "(0008,0016)": "1.2.840.10008.5.1.4.1.1.12.1", "(0008,0060)": "XA",
        "(0008,0008)": "ORIGINAL\\PRIMARY\\SINGLE PLANE", "(0028,1040)": "LIN", "(0018,0060)": "70",
        "(0018,1155)": "GR", "(0018,1151)": "3", "(0018,1150)": "100", "(0018,1152)": "1",
        "(0018,1110)": sid, "(0018,1111)": sod, "(0018,1164)": ips, "(0018,1500)": "STATIC",
        "(0018,1510)": primary, "(0018,1511)": secondary, "(0018,0015)": "PELVIS", "(0020,0020)": "L\\F",
    }
    args = [dcmodify, "-nb"]
    for k, v in ins.items():
        args += ["-i", f"{k}={v}"]
    for e in extra:
        args += ["-i", e]
    args += ["-e", "(0008,0064)", str(out)]
    run(args)
    run([dcmodify, "-nb", "-i", "(0008,0070)=", str(out)])
    return out


def make_enhanced_xa(path: Path, frames: np.ndarray, *, sid: float = 1011.7, spacing: tuple[float, float] = (0.2, 0.3),
                     sod: float = 750.0, angles: list[tuple[float, float]] | None = None, flip: bool = False,
                     rotation: int = 0, modality: str = "XA", pir: str = "LIN") -> Path:
    """A multi-frame Enhanced XA/XRF object with shared and per-frame functional groups (pydicom)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    n, H, W = frames.shape
    sop = "1.2.840.10008.5.1.4.1.1.12.1.1" if modality == "XA" else "1.2.840.10008.5.1.4.1.1.12.2.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, uid
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Enhanced^Test", "E1"
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.InstanceNumber = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = str(n)
    ds.PositionerType = "CARM"
    ds.DetectorElementSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = Dataset()
    shared.FramePixelDataPropertiesSequence = Sequence([item(
        ImagerPixelSpacing=[f"{spacing[0]:g}", f"{spacing[1]:g}"], PixelIntensityRelationship=pir,
        PixelIntensityRelationshipSign=1, FrameType=["ORIGINAL", "PRIMARY", "SINGLE PLANE"])])
    shared.XRayGeometrySequence = Sequence([item(DistanceSourceToDetector=sid, DistanceSourceToIsocenter=sod)])
    shared.FieldOfViewSequence = Sequence([item(FieldOfViewShape="RECTANGLE", FieldOfViewOrigin=["0", "0"],
                                                FieldOfViewRotation=str(rotation),
                                                FieldOfViewHorizontalFlip="YES" if flip else "NO")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for i in range(n):
        f = Dataset()
        a = angles[i] if angles else (0.0, 0.0)
        f.PositionerPositionSequence = Sequence([item(PositionerPrimaryAngle=a[0], PositionerSecondaryAngle=a[1])])
        f.FrameContentSequence = Sequence([item(FrameReferenceDateTime=f"20240101120000.{i:06d}")])
        per.append(f)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def asymmetric_phantom(h: int = 96, w: int = 128) -> np.ndarray:
    """An 'F'-shaped line-integral image: mirroring or rotating it is always visible."""
    L = np.zeros((h, w))
    L[h // 8: 7 * h // 8, w // 6: w // 6 + w // 10] = 1.2            # stem
    L[h // 8: h // 8 + h // 10, w // 6: w // 2 + w // 6] = 1.2       # top bar, to the right
    L[h // 2 - h // 20: h // 2 + h // 20, w // 6: w // 2] = 0.8       # middle bar
    return L


# ----------------------------------------------------------------------------- CT series
def write_small_ct_series(folder, n=4, rows=6, cols=5, placeholder=None):
    """A small CT series; ``placeholder`` = (keyword, value) written into slice 1 (a unique text that
    a test's byte patch can then replace by bytes pydicom would refuse to write)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        f = folder / f"s{k:03d}.dcm"
        ds = FileDataset(str(f), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", uid, "1.2.3"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["0", "0", f"{2.0 * k}"]
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        if placeholder is not None and k == 1:
            setattr(ds, *placeholder)
        ds.PixelData = np.full((rows, cols), 1024 + 10 * k, np.uint16).tobytes()
        ds.save_as(f, enforce_file_format=True)
    return folder


def phantom_xa_case(folder: Path, offsets: list[tuple[list[float], list[float]]]):
    """The 64^3 / 3 mm phantom saved as ``folder/ct.npz`` and one XA frame per (rotation deg,
    translation mm) offset from a PA pose at 700 mm (our projector, no noise, 128^2 detector).
    Returns (volume, intrinsics, true poses, frame paths)."""
    from calib.geometry import Intrinsics
    from calib.writer import write_xa
    from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
    from runtime.synthetic.phantom import make_phantom

    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    np.savez(folder / "ct.npz", data=vol.data, affine=vol.affine, mask=vol.mask, units="mu")
    intr = Intrinsics.perlove_plx118f(8)
    poses, paths = [], []
    for i, (rot, trans) in enumerate(offsets):
        T = perturb_pose(pa_pose(vol.centre, 700.0), vol.centre, rot, trans)
        fr = synthesize_frame(vol, intr, T, rng=np.random.default_rng(i), i0=np.inf)
        paths.append(write_xa(folder / (f"frame_{i}.dcm" if i else "frame.dcm"), fr.line_integrals, intr,
                              sod_mm=700.0))
        poses.append(T)
    return vol, intr, poses, paths
