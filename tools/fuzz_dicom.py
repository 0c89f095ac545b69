"""The ``dicom`` fuzz campaign (`tools.fuzz`): `calib.read_fluoro` / `calib.iter_fluoro` on mutated X-ray
DICOM objects.

Seeds (built once): XA / RF objects written by `calib.write_xa` (single frame, cine, collimated,
mirrored with a round collimator, LOG and DISP intensities), an Enhanced XA with functional groups,
the same XA transcoded (RLE, JPEG 2000, implicit VR, big endian, deflated), real CR / DX files when
installed (pydicom's CR, pydicom-data's RG1 / RG3 CR, deid-data's DX cat; the large ones cropped to
256 x 256), real CT / MR objects (wrong SOP class), and "bombs": the largest frame the default
`calib.limits.Limits` accept (4096 x 4096, constant) as RLE (0.5 MB) and deflated (34 KB), and an
8192 x 8192 RLE frame (2 MB) over the limit.

A case takes one seed and applies, at random, tag-level mutations (values of the tags the reader
uses: huge / zero / negative / NaN / inf / non-numeric / multi-valued; wrong VRs; deleted tags;
another SOP class or transfer syntax claimed; broken Pixel Data; Modality LUT and functional-group
sequences with bad content) and / or byte-level mutations (bit flips, truncation, inserted and
deleted bytes, element length fields overwritten), then calls `read_fluoro` (various frame indices,
with or without ``intrinsics=``, ``detect_field``, ``allow_non_projection``, ``i0``), `read_fluoro` on
the in-memory Dataset, and `iter_fluoro` (two frames consumed). Every frame returned is checked:
image finite where ``valid``, shapes consistent, intrinsics finite and matching the frame.
"""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tools.fuzz_common import (ADVERSARIAL_NUMBERS, ADVERSARIAL_STRINGS, BadOutput, Ctx, HarnessError, chance,
                               check_finite_array, cli_call, mutate_bytes, pick)

TAGS = (
    "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "RescaleSlope", "RescaleIntercept",
    "RescaleType", "DistanceSourceToDetector", "DistanceSourceToPatient", "DistanceSourceToIsocenter",
    "ImagerPixelSpacing", "PixelSpacing", "PixelSpacingCalibrationType", "FieldOfViewRotation",
    "FieldOfViewHorizontalFlip", "CollimatorShape", "CollimatorLeftVerticalEdge", "CollimatorRightVerticalEdge",
    "CollimatorUpperHorizontalEdge", "CollimatorLowerHorizontalEdge", "CenterOfCircularCollimator",
    "RadiusOfCircularCollimator", "VerticesOfThePolygonalCollimator", "ShutterShape", "ShutterLeftVerticalEdge",
    "ShutterRightVerticalEdge", "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge",
    "CenterOfCircularShutter", "RadiusOfCircularShutter", "VerticesOfThePolygonalShutter",
    "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "SOPClassUID", "PositionerPrimaryAngle",
    "PositionerSecondaryAngle", "PositionerPrimaryAngleIncrement", "PositionerSecondaryAngleIncrement",
    "FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate", "FrameIncrementPointer",
    "Modality", "PresentationIntentType", "ImageType", "PositionOfIsocenterProjection", "WindowCenter",
    "WindowWidth", "PresentationLUTShape", "PatientOrientation", "ViewPosition", "SpecificCharacterSet",
    "DetectorElementSpacing", "FieldOfViewOrigin", "FieldOfViewDimensions", "DetectorActiveOrigin",
    "DetectorBinning", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
)
IMPORTANT = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelData", "SOPClassUID", "ImagerPixelSpacing",
             "DistanceSourceToDetector", "PhotometricInterpretation", "NumberOfFrames", "SamplesPerPixel",
             "PixelRepresentation", "RescaleSlope", "PixelIntensityRelationship", "HighBit")
SOP_UIDS = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7",
            "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.481.1",
            "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.1.1",
            "1.2.840.10008.5.1.4.1.1.12.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.5.1.4.1.1.1.2", "", "1.2.3", "1." + "9" * 200, "not-a-uid", "\x00")
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                     "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.100", "1.2.3.4", "")
VRS = ("US", "UL", "SS", "SL", "FL", "FD", "DS", "IS", "CS", "UI", "LO", "OB", "OW", "UN", "AT", "SQ", "UT", "DA")
SEQ_MACROS = ("XRayGeometrySequence", "PixelMeasuresSequence", "FramePixelDataPropertiesSequence",
              "FieldOfViewSequence", "PositionerPositionSequence", "PixelValueTransformationSequence",
              "FrameContentSequence", "CollimatorShapeSequence", "XAXRFFrameCharacteristicsSequence")


# ----------------------------------------------------------------------------------- seeds
def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Line integrals: a smooth background with a bright disc and a bar (asymmetric)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    L = 0.3 + 2.0 * np.exp(-((x - 0.45 * w) ** 2 + (y - 0.55 * h) ** 2) / (0.05 * w * h))
    L[int(0.2 * h):int(0.3 * h), int(0.2 * w):int(0.8 * w)] += 1.0
    return L + 0.02 * rng.standard_normal((h, w))


def _enhanced_xa(path: Path, frames: np.ndarray) -> Path:
    """A small Enhanced XA with shared and per-frame functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    import pydicom.uid
    from pydicom.uid import ExplicitVRLittleEndian

    generate_uid = pydicom.uid.generate_uid  # looked up at call time: setup() makes it deterministic

    n, H, W = frames.shape
    sop = "1.2.840.10008.5.1.4.1.1.12.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, uid, "XA"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = str(n)

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = Dataset()
    shared.FramePixelDataPropertiesSequence = Sequence([item(ImagerPixelSpacing=["0.8", "0.8"],
                                                             PixelIntensityRelationship="LIN",
                                                             PixelIntensityRelationshipSign=1)])
    shared.XRayGeometrySequence = Sequence([item(DistanceSourceToDetector=1011.7, DistanceSourceToIsocenter=750.0)])
    shared.FieldOfViewSequence = Sequence([item(FieldOfViewShape="RECTANGLE", FieldOfViewOrigin=["0", "0"],
                                                FieldOfViewRotation="90", FieldOfViewHorizontalFlip="YES")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for i in range(n):
        f = Dataset()
        f.PositionerPositionSequence = Sequence([item(PositionerPrimaryAngle=10.0 * i, PositionerSecondaryAngle=5.0)])
        per.append(f)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    v = np.clip(4000 * np.exp(-frames), 0, 4095)
    ds.PixelData = np.ascontiguousarray(v, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _rle_zeros_frame(rows: int, cols: int, value: int = 0) -> bytes:
    """One RLE Lossless frame of 16-bit pixels all equal to ``value`` (two byte segments of replicate
    runs: a few bytes per 128 pixels)."""
    n = rows * cols

    def segment(byte: int) -> bytes:
        seg = bytes([0x81, byte]) * (n // 128)
        r = n % 128
        if r > 1:
            seg += bytes([257 - r, byte])
        elif r == 1:
            seg += bytes([0, byte])
        return seg + (b"\0" if len(seg) % 2 else b"")

    hi, lo = segment(value >> 8), segment(value & 0xFF)
    header = struct.pack("<16I", 2, 64, 64 + len(hi), *([0] * 13))
    return header + hi + lo


def _to_bytes(ds: Any, transfer_syntax: Any = None) -> bytes:
    import pydicom

    buf = io.BytesIO()
    if transfer_syntax is None:
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        pydicom.dcmwrite(buf, ds, implicit_vr=transfer_syntax.is_implicit_VR,
                         little_endian=transfer_syntax.is_little_endian, force_encoding=True)
    return buf.getvalue()


def _real_files() -> list[tuple[str, Path, bool]]:
    """(name, path, crop) of real DICOM files found locally (no download)."""
    import pydicom

    out = []
    test_files = Path(pydicom.__file__).parent / "data" / "test_files"
    for rel in ("dicomdirtests/77654033/CR1/6154", "dicomdirtests/77654033/CR2/6247", "CT_small.dcm", "MR_small.dcm",
                "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "rtplan.dcm", "nested_priv_SQ.dcm"):
        p = test_files / rel
        if p.is_file():
            out.append((Path(rel).name, p, False))
    try:
        import data_store  # pydicom-data

        d = Path(data_store.__file__).parent / "data"
        for name, crop in (("RG3_J2KI.dcm", False), ("RG1_UNCR.dcm", True), ("emri_small_RLE.dcm", False),
                           ("JPGLosslessP14SV1_1s_1f_8b.dcm", False), ("emri_small_big_endian.dcm", False)):
            if (d / name).is_file():
                out.append((name, d / name, crop))
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    cat = root / ".cache" / "deid" / "deid-data-0.0.20" / "deid_data" / "data" / "animals" / "cat.dcm"
    if cat.is_file():
        out.append(("deid_cat_dx.dcm", cat, True))
    return out


def _crop(path: Path, size: int = 256) -> bytes:
    """A real uncompressed object cropped to its central size x size pixels (tags kept)."""
    import pydicom

    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    h, w = a.shape[:2]
    r0, c0 = max(0, h // 2 - size // 2), max(0, w // 2 - size // 2)
    a = np.ascontiguousarray(a[r0:r0 + size, c0:c0 + size])
    ds.Rows, ds.Columns = a.shape
    ds.PixelData = a.tobytes()
    return _to_bytes(ds)


def setup(workdir: Path, seed: int) -> dict:
    """Seed objects (bytes) and their element offsets; imports everything the cases use. UIDs are
    derived from `seed` (pydicom's random UIDs vary in length, which would move every offset)."""
    import pydicom.uid

    counter = itertools.count()
    real_generate_uid = pydicom.uid.generate_uid

    def _uid(prefix: Any = pydicom.uid.PYDICOM_ROOT_UID, entropy_srcs: Any = None) -> Any:
        return real_generate_uid(prefix, entropy_srcs=entropy_srcs or [f"sopi-fuzz-{seed}-{next(counter)}"])

    pydicom.uid.generate_uid = _uid
    try:
        return _setup(workdir, seed)
    finally:
        pydicom.uid.generate_uid = real_generate_uid


def _setup(workdir: Path, seed: int) -> dict:
    import cv2  # noqa: F401  (imported before the fork)
    import pydicom
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian,
                             JPEG2000Lossless, RLELossless)

    from calib import Intrinsics, iter_fluoro, read_fluoro, write_xa  # noqa: F401
    from calib.calibration import profile_names

    workdir.mkdir(parents=True, exist_ok=True)
    K = Intrinsics.perlove_plx118f(16)  # 64 x 64
    L = _image(64, 64, 1)
    seeds: list[tuple[str, bytes, float]] = []

    def add(name: str, data: bytes, weight: float) -> None:
        seeds.append((name, data, weight))

    def xa(name: str, frames: np.ndarray, weight: float, **kw: Any) -> Path:
        # a fixed acquisition time (not now): the same seed bytes on every run
        p = write_xa(workdir / f"{name}.dcm", frames, K, acquired=_dt.datetime(2024, 6, 11, 12), **kw)
        add(name, p.read_bytes(), weight)
        return p

    p_xa = xa("xa", L, 4.0, sod_mm=700.0, primary_deg=10.0)
    p_cine = xa("xa_cine3", np.stack([L, 0.9 * L, 1.1 * L]), 3.0)
    xa("rf_cine2", np.stack([L, 1.2 * L]), 2.0, modality="RF")
    xa("xa_collimated", L, 1.5, collimator=(5, 60, 4, 58))
    xa("xa_mirrored_round", L, 1.5, mirrored=True, circular_collimator=(32.0, 30.0, 28.0))
    xa("xa_log", L, 1.0, pir="LOG")
    xa("xa_disp", np.clip(np.exp(-L), 0, 1), 1.0, pir="DISP")
    add("enhanced_xa", _enhanced_xa(workdir / "enh.dcm", np.stack([L, L[::-1]])).read_bytes(), 2.0)
    for p, tag in ((p_xa, "xa"), (p_cine, "cine")):
        for ts, w in ((RLELossless, 1.0), (JPEG2000Lossless, 1.0), (ImplicitVRLittleEndian, 0.7),
                      (ExplicitVRBigEndian, 0.7), (DeflatedExplicitVRLittleEndian, 0.5)):
            ds = pydicom.dcmread(p)
            try:
                if ts.is_compressed:
                    ds.compress(ts, generate_instance_uid=False)  # a random UID would make seeds vary
                    data = _to_bytes(ds)
                else:
                    data = _to_bytes(ds, ts)
            except Exception:  # an encoder plugin missing: that seed is left out
                continue
            add(f"{tag}_{ts.name.split()[0].lower()}", data, w)
    for name, path, crop in _real_files():
        try:
            data = _crop(path) if crop else path.read_bytes()
        except Exception:
            continue
        if len(data) < 4 << 20:
            add(f"real_{name}", data, 1.0)
    # bombs: small files that decode to the largest frame the default Limits accept (4096 x 4096 since
    # max_frame_pixels = 2^24; a constant 2000, so that the reader goes all the way), and one over it
    from pydicom.encaps import encapsulate

    for size, weight in ((4096, 0.3), (8192, 0.1)):
        ds = pydicom.dcmread(p_xa)
        ds.Rows = ds.Columns = size
        ds.PixelData = encapsulate([_rle_zeros_frame(size, size, 2000)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
        add(f"bomb_rle_{size}", _to_bytes(ds), weight)
    ds = pydicom.dcmread(p_xa)
    ds.Rows = ds.Columns = 4096
    ds.PixelData = np.full((4096, 4096), 2000, np.uint16).tobytes()
    add("bomb_deflated_4096", _to_bytes(ds, DeflatedExplicitVRLittleEndian), 0.3)
    del ds
    offsets = {name: _element_offsets(data) for name, data, _ in seeds}
    w = np.array([s[2] for s in seeds])
    # warm the readers (decoder plugins, cv2) before the fork
    for name, data, _ in seeds:
        if name.startswith("bomb"):
            continue
        p = workdir / "warm.dcm"
        p.write_bytes(data)
        try:
            read_fluoro(p, intrinsics=None)
        except Exception:
            pass
    # a CT for sopi-register runs on the mutated frames (the phantom, 32^3 at 6 mm, as .npz)
    from runtime.synthetic.phantom import make_phantom

    ph = make_phantom(shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    ct = workdir / "ct.npz"
    np.savez(ct, data=ph.data, affine=ph.affine, units=np.array("mu"))
    import calib.cli  # noqa: F401
    import runtime.cli.register  # noqa: F401
    return {"seeds": seeds, "p": w / w.sum(), "offsets": offsets, "profiles": list(profile_names()), "ct": ct}


def _element_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset of the length field, its size in bytes) of the top-level elements of a DICOM file."""
    import pydicom
    from pydicom.dataelem import RawDataElement

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return []
    if "Deflated" in str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")):
        return []
    out = []
    implicit = ds.original_encoding[0]
    for tag in list(ds._dict):
        e = ds._dict[tag]
        if isinstance(e, RawDataElement) and e.value_tell:
            long = implicit or e.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT", "UC", "UR")
            size = 4 if long else 2
            if e.value_tell - size >= 0:
                out.append((e.value_tell - size, size))
    return out


# ----------------------------------------------------------------------------------- values
def _number_text(rng: np.random.Generator) -> str:
    v = pick(rng, ADVERSARIAL_NUMBERS)
    if isinstance(v, float):
        return pick(rng, (repr(v), f"{v:g}", f"{v:.6e}")) if math.isfinite(v) else pick(rng, (str(v), str(v).upper()))
    return str(v)


def _text_value(rng: np.random.Generator) -> str:
    k = int(rng.integers(5))
    if k == 0:
        return pick(rng, ADVERSARIAL_STRINGS)
    if k in (1, 2):
        return _number_text(rng)
    if k == 3:
        n = int(pick(rng, (2, 3, 4, 5, 7, 100, 3000)))
        return "\\".join(_number_text(rng) for _ in range(n))
    return "\\".join((_number_text(rng), _number_text(rng)))


def _binary_value(rng: np.random.Generator, vr: str) -> bytes:
    fmt = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d", "AT": "<HH"}.get(vr)
    n = int(pick(rng, (1, 1, 1, 2, 3, 0, 1000)))
    if fmt is None or chance(rng, 0.1):
        return bytes(rng.integers(0, 256, int(pick(rng, (1, 2, 3, 5, 8, 64, 4096))), dtype=np.uint8))
    out = b""
    for _ in range(n):
        if vr == "AT":
            out += struct.pack(fmt, int(rng.integers(0, 65536)), int(rng.integers(0, 65536)))
            continue
        v = pick(rng, ADVERSARIAL_NUMBERS)
        if vr in ("FL", "FD"):
            try:
                out += struct.pack(fmt, float(v))
            except (OverflowError, struct.error):
                out += struct.pack(fmt, float("inf"))
        else:
            bits = struct.calcsize(fmt) * 8
            iv = int(v) if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)) else 0
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt[1].islower() else (0, (1 << bits) - 1)
            out += struct.pack(fmt, min(max(iv, lo), hi))
    return out


def _raw_value(rng: np.random.Generator, vr: str) -> bytes:
    if vr in ("US", "UL", "SS", "SL", "FL", "FD", "AT", "OB", "OW", "UN", "SQ"):
        return _binary_value(rng, vr)
    s = _text_value(rng)
    try:
        b = s.encode("latin-1")
    except UnicodeEncodeError:
        b = s.encode("utf-8")
    return b + (b"\0" if vr == "UI" else b" ") if len(b) % 2 else b


def _set_raw(ds: Any, keyword_or_tag: Any, vr: str, value: bytes) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword_or_tag)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, bool(implicit), True if little is None else little)


def _vr_of(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(keyword)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _known(keyword: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword) is not None


# ----------------------------------------------------------------------------------- tag mutators
def m_value(rng, ds, ctx):
    kw = pick(rng, TAGS)
    if not _known(kw):
        return
    vr = _vr_of(kw)
    if kw == "SpecificCharacterSet":  # pydicom needs a text value to write the file
        v = pick(rng, ("ISO_IR 100", "ISO_IR 192", "GB18030", "ISO 2022 IR 87", "abc", "", "ISO_IR 100\\ISO_IR 192"))
        _set_raw(ds, kw, "CS", _even(v))
        ctx.note(f"tag {kw} = {v!r}")
        return
    val = _raw_value(rng, vr)
    _set_raw(ds, kw, vr, val)
    ctx.note(f"tag {kw} ({vr}) = {val[:60]!r}{'...' if len(val) > 60 else ''} ({len(val)} bytes)")


def m_wrong_vr(rng, ds, ctx):
    kw = pick(rng, TAGS)
    if not _known(kw) or kw == "SpecificCharacterSet":  # pydicom needs it to write the file
        return
    vr = pick(rng, VRS)
    val = _raw_value(rng, vr)
    _set_raw(ds, kw, vr, val)
    ctx.note(f"tag {kw} as VR {vr} = {val[:60]!r} ({len(val)} bytes)")


def m_size(rng, ds, ctx):
    """Huge / zero / mismatched Number of Frames, Rows, Columns (with their natural VRs)."""
    kw = pick(rng, ("NumberOfFrames", "Rows", "Columns", "NumberOfFrames"))
    v = int(pick(rng, (0, -1, 2, 3, 4, 65535, 65536, 100_000, 100_001, 2 ** 31 - 1, 2 ** 31, 10 ** 9, 10 ** 12,
                       2 ** 63, 10 ** 30)))
    if kw == "NumberOfFrames":
        val = str(v).encode()
        val += b" " if len(val) % 2 else b""
        _set_raw(ds, kw, "IS", val)
    else:
        _set_raw(ds, kw, "US", struct.pack("<H", v & 0xFFFF) if v >= 0 else struct.pack("<h", max(v, -32768)))
    ctx.note(f"size {kw} = {v}")


def m_delete(rng, ds, ctx):
    from pydicom.tag import Tag

    if chance(rng, 0.6):
        kw = pick(rng, IMPORTANT)
        if kw in ds:
            del ds[kw]
            ctx.note(f"delete {kw}")
        return
    tags = [t for t in ds._dict]
    if tags:
        t = pick(rng, tags)
        del ds[Tag(t)]
        ctx.note(f"delete element {Tag(t)}")


def m_sop(rng, ds, ctx):
    uid = pick(rng, SOP_UIDS)
    b = uid.encode("latin-1")
    b += b"\0" if len(b) % 2 else b""
    _set_raw(ds, "SOPClassUID", "UI", b)
    if chance(rng, 0.5) and getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPClassUID = uid if uid and len(uid) <= 64 and uid[0].isdigit() else "1.2.3"
    ctx.note(f"SOP Class UID = {uid[:80]!r}")


def m_pixel(rng, ds, ctx):
    from pydicom.tag import Tag

    tag = Tag("PixelData")
    if tag not in ds:
        return
    k = int(rng.integers(7))
    try:
        data = ds[tag].value
    except Exception:
        return
    if not isinstance(data, (bytes, bytearray)):
        return
    vr = ds[tag].VR if ds[tag].VR in ("OB", "OW") else "OW"
    if k == 0:
        del ds[tag]
        ctx.note("delete Pixel Data")
    elif k == 1:
        cut = int(rng.integers(0, max(1, len(data))))
        _set_raw(ds, tag, vr, bytes(data[:cut - cut % 2]))
        ctx.note(f"Pixel Data truncated to {cut - cut % 2} of {len(data)} bytes")
    elif k == 2:
        extra = int(pick(rng, (2, 64, 8192, 1 << 20)))
        _set_raw(ds, tag, vr, bytes(data) + bytes(rng.integers(0, 256, extra, dtype=np.uint8)))
        ctx.note(f"Pixel Data extended by {extra} bytes")
    elif k == 3:
        _set_raw(ds, tag, vr, b"")
        ctx.note("Pixel Data empty")
    elif k == 4:
        fill = int(pick(rng, (0x00, 0xFF)))
        _set_raw(ds, tag, vr, bytes([fill]) * len(data))
        ctx.note(f"Pixel Data all 0x{fill:02x}")
    elif k == 5:
        arr = np.frombuffer(bytes(data), np.uint8).copy()
        idx = rng.integers(0, max(1, arr.size), max(1, arr.size // 50))
        arr[idx] = rng.integers(0, 256, idx.size, dtype=np.uint8)
        _set_raw(ds, tag, vr, arr.tobytes())
        ctx.note("Pixel Data 2 % random bytes")
    else:
        from pydicom.encaps import encapsulate

        frags = [bytes(rng.integers(0, 256, int(rng.integers(2, 400)) * 2, dtype=np.uint8))
                 for _ in range(int(rng.integers(1, 4)))]
        ds.PixelData = encapsulate(frags)
        ds[tag].VR = "OB"
        ds[tag].is_undefined_length = True
        ctx.note(f"Pixel Data replaced by {len(frags)} random encapsulated fragments")


def m_transfer_syntax(rng, ds, ctx):
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    ts = pick(rng, TRANSFER_SYNTAXES)
    _set_raw(meta, "TransferSyntaxUID", "UI", ts.encode() + (b"\0" if len(ts) % 2 else b""))
    ctx.note(f"file meta claims transfer syntax {ts!r} (data set encoding unchanged)")


def m_modality_lut(rng, ds, ctx):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    desc = [int(pick(rng, (0, 1, 4, 256, 4096, 65535, 65536))), int(pick(rng, (0, -5, 100, 65535, -32768))),
            int(pick(rng, (0, 1, 8, 12, 16, 17, 32, 64)))]
    raw = b"".join(struct.pack("<H", d & 0xFFFF) for d in desc)
    _set_raw(item, "LUTDescriptor", pick(rng, ("US", "SS", "US")), raw)
    n = int(pick(rng, (0, 1, 3, 4, 256, 4096, 70000)))
    _set_raw(item, "LUTData", "OW", bytes(rng.integers(0, 256, 2 * n, dtype=np.uint8)))
    if chance(rng, 0.5):
        item.ModalityLUTType = pick(rng, ("HU", "US", "OD", ""))
    ds.ModalityLUTSequence = Sequence([item] * int(pick(rng, (1, 1, 2))) if chance(rng, 0.9) else [])
    ctx.note(f"Modality LUT Sequence descriptor {desc}, {n} entries")


def m_functional_groups(rng, ds, ctx):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item() -> Dataset:
        d = Dataset()
        for _ in range(int(rng.integers(1, 4))):
            macro = Dataset()
            for _ in range(int(rng.integers(1, 4))):
                kw = pick(rng, TAGS)
                if _known(kw) and kw != "SpecificCharacterSet":
                    # VR UN inside items: pydicom writes the bytes as they are; readers take the
                    # dictionary VR back (replace_un_with_known_vr)
                    _set_raw(macro, kw, "UN", _nested_value(rng, _vr_of(kw)))
            setattr(d, pick(rng, SEQ_MACROS), Sequence([macro] if chance(rng, 0.9) else []))
        return d

    n = _n_frames_hint(ds)
    which = pick(rng, ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"))
    count = 1 if which.startswith("Shared") else int(pick(rng, (0, 1, max(0, n - 1), n, n + 5)))
    if which in ds:
        del ds[which]
    setattr(ds, which, Sequence([item() for _ in range(count)]))
    ctx.note(f"{which} with {count} item(s) of adversarial macros")


# pydicom converts the IS values of sequence items when it writes them and fails on "inf" / "1e999"
_IS_SAFE = ("0", "-1", "1", "65536", "2147483648", "99999999999", "-99999999999", "", "1\\2\\3", "7\\-7")


def _nested_value(rng, vr: str) -> bytes:
    """An adversarial value pydicom can still write inside a sequence item (it converts those)."""
    if vr == "IS":
        return _even(pick(rng, _IS_SAFE))
    if vr in ("US", "UL", "SS", "SL", "FL", "FD", "AT"):
        size = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4}[vr]
        b = _binary_value(rng, vr)
        return b[:len(b) - len(b) % size] or b"\0" * size
    return _raw_value(rng, vr)


def _n_frames_hint(ds: Any) -> int:
    try:
        return max(1, min(8, int(str(ds.get("NumberOfFrames", 1) or 1).strip())))
    except (ValueError, TypeError):
        return 1


def m_shutter(rng, ds, ctx):
    """A collimator / shutter shape with adversarial parameters."""
    prefix = pick(rng, ("Collimator", "Shutter"))
    shape = pick(rng, ("RECTANGULAR", "CIRCULAR", "POLYGONAL", "RECTANGULAR\\CIRCULAR\\POLYGONAL", "OTHER"))
    _set_raw(ds, f"{prefix}Shape", "CS", (shape + " " * (len(shape) % 2)).encode())
    vals = lambda n: "\\".join(_number_text(rng) if chance(rng, 0.5) else str(int(rng.integers(-10, 80)))  # noqa: E731
                               for _ in range(n))
    for edge in ("LeftVerticalEdge", "RightVerticalEdge", "UpperHorizontalEdge", "LowerHorizontalEdge"):
        if chance(rng, 0.8):
            _set_raw(ds, f"{prefix}{edge}", "IS", _even(vals(1)))
    _set_raw(ds, f"CenterOfCircular{prefix}", "IS", _even(vals(int(pick(rng, (2, 2, 1, 3))))))
    _set_raw(ds, f"RadiusOfCircular{prefix}", "IS", _even(vals(1)))
    nv = int(pick(rng, (6, 8, 7, 2, 40, 20000)))
    _set_raw(ds, f"VerticesOfThePolygonal{prefix}", "IS", _even(vals(nv)))
    ctx.note(f"{prefix} shape {shape} with adversarial parameters ({nv} vertex values)")


def _even(s: str) -> bytes:
    b = s.encode("latin-1", "replace")
    return b + b" " if len(b) % 2 else b


def m_bits(rng, ds, ctx):
    """Inconsistent Bits Allocated / Stored / High Bit / Pixel Representation / Samples."""
    for kw, choices in (("BitsAllocated", (1, 8, 12, 16, 32, 64, 0, 255)), ("BitsStored", (1, 8, 12, 16, 17, 32, 0)),
                        ("HighBit", (0, 7, 11, 15, 31, 63)), ("PixelRepresentation", (0, 1, 2)),
                        ("SamplesPerPixel", (1, 1, 3, 0, 4))):
        if chance(rng, 0.5):
            v = int(pick(rng, choices))
            _set_raw(ds, kw, "US", struct.pack("<H", v))
            ctx.note(f"{kw} = {v}")


TAG_MUTATORS = ((m_value, 6.0), (m_wrong_vr, 2.0), (m_size, 2.0), (m_delete, 2.0), (m_sop, 1.0), (m_pixel, 2.0),
                (m_transfer_syntax, 1.0), (m_modality_lut, 0.7), (m_functional_groups, 1.0), (m_shutter, 1.0),
                (m_bits, 1.0))
_TM_P = np.array([w for _, w in TAG_MUTATORS]) / sum(w for _, w in TAG_MUTATORS)


def _write(ds: Any) -> bytes:
    """The mutated data set as a file. pydicom refuses some inconsistent objects (raw Pixel Data under a
    compressed transfer syntax): those are written under the encoding the data set has and the file
    meta's Transfer Syntax UID is patched afterwards."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(ds, "original_encoding", (None, None))
    buf = io.BytesIO()
    try:
        if implicit is None:
            pydicom.dcmwrite(buf, ds, enforce_file_format=False)
        else:
            pydicom.dcmwrite(buf, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
        return buf.getvalue()
    except Exception as exc:
        first = exc
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        raise HarnessError(f"pydicom cannot write the mutated data set ({type(first).__name__}: {first})")
    try:
        claimed = meta.get_item("TransferSyntaxUID")
        claimed_value = claimed.value if claimed is not None else b""
        if isinstance(claimed_value, str):
            claimed_value = claimed_value.encode("latin-1", "replace")
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, implicit_vr=bool(implicit), little_endian=True, force_encoding=True)
        return _patch_meta_ts(buf.getvalue(), bytes(claimed_value))
    except Exception as exc:
        raise HarnessError(f"pydicom cannot write the mutated data set ({type(first).__name__}: {first}; then "
                           f"{type(exc).__name__}: {exc})") from None


def _patch_meta_ts(data: bytes, ts: bytes) -> bytes:
    """``data`` (preamble, DICM, explicit-VR file meta) with (0002,0010) set to ``ts`` and the group
    length fixed."""
    if data[128:132] != b"DICM":
        return data
    pos, meta_elems = 132, []
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos:pos + 4])
        if group != 2:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            n = struct.unpack("<I", data[pos + 8:pos + 12])[0]
            end = pos + 12 + n
        else:
            n = struct.unpack("<H", data[pos + 6:pos + 8])[0]
            end = pos + 8 + n
        meta_elems.append((elem, data[pos:end]))
        pos = end
    ts = ts + (b"\0" if len(ts) % 2 else b"")
    out = []
    for elem, raw in meta_elems:
        if elem == 0x0000:
            continue
        if elem == 0x0010:
            raw = struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", len(ts)) + ts
        out.append(raw)
    body = b"".join(out)
    glen = struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(body))
    return data[:132] + glen + body + data[pos:]


def length_smash(rng, data: bytes, offsets: list[tuple[int, int]], ctx: Ctx) -> bytes:
    if not offsets:
        return data
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 3))):
        off, size = pick(rng, offsets)
        if off + size > len(buf):
            continue
        if size == 4:
            v = int(pick(rng, (0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, 0, 1, 3, len(buf))))
            buf[off:off + 4] = struct.pack("<I", v & 0xFFFFFFFF)
        else:
            v = int(pick(rng, (0xFFFF, 0xFFFE, 0, 1, 3, 0x8000)))
            buf[off:off + 2] = struct.pack("<H", v)
        ctx.note(f"bytes: element length field at {off} ({size} bytes) = {v:#x}")
    return bytes(buf)


# ----------------------------------------------------------------------------------- checks
def check_frame(f: Any) -> None:
    from calib.frame import FluoroFrame
    from calib.geometry import Intrinsics

    if not isinstance(f, FluoroFrame):
        raise BadOutput(f"returned a {type(f).__name__}, not a FluoroFrame")
    img, valid = f.image, f.valid
    if not isinstance(img, np.ndarray) or img.ndim != 2:
        raise BadOutput(f"frame.image is not a 2-D array ({getattr(img, 'shape', None)})")
    if not isinstance(valid, np.ndarray) or valid.dtype != bool or valid.shape != img.shape:
        raise BadOutput(f"frame.valid {getattr(valid, 'dtype', None)} {getattr(valid, 'shape', None)} does not "
                        f"match frame.image {img.shape}")
    check_finite_array(img, "frame.image", where=valid)
    K = f.intrinsics
    if not isinstance(K, Intrinsics):
        raise BadOutput(f"frame.intrinsics is a {type(K).__name__}")
    if (K.width, K.height) != (img.shape[1], img.shape[0]):
        raise BadOutput(f"intrinsics {K.width}x{K.height} but the image is {img.shape[1]}x{img.shape[0]}")
    for name in ("sdd_mm", "du_mm", "dv_mm", "cx", "cy"):
        v = getattr(K, name)
        if not math.isfinite(v):
            raise BadOutput(f"intrinsics.{name} = {v}")
    if f.i0 is not None and not math.isfinite(float(f.i0)):
        raise BadOutput(f"frame.i0 = {f.i0} (non-finite) with {int(valid.sum())} valid pixels")


def consume(it: Any, n: int) -> list:
    out = []
    for f in itertools.islice(it, n):
        check_frame(f)
        out.append(f)
    return out


# ----------------------------------------------------------------------------------- case
def _header_shape(data: bytes) -> tuple[int, int] | None:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        r, c = int(ds.Rows), int(ds.Columns)
        return (r, c) if 0 < r <= 8192 and 0 < c <= 8192 else None
    except Exception:
        return None


def run_case(state: dict, rng: np.random.Generator, case_dir: Path, ctx: Ctx) -> None:
    import pydicom

    from calib import Intrinsics, iter_fluoro, read_fluoro

    seeds = state["seeds"]
    i = int(rng.choice(len(seeds), p=state["p"]))
    name, data, _ = seeds[i]
    ctx.note(f"seed {name} ({len(data)} bytes)")
    path = case_dir / "in.dcm"
    # ------------------------------------------------------------- argument-type cases
    if chance(rng, 0.03):
        path.write_bytes(data)
        bad = pick(rng, (None, 123, 1.5, b"in.dcm", [str(path)], {"path": str(path)}, object()))
        ctx.note(f"argument type: path_or_dataset = {type(bad).__name__}")
        ctx.call("read_fluoro", read_fluoro, bad, type_error_ok=True, check=check_frame)
        ctx.call("iter_fluoro", lambda: consume(iter_fluoro(bad), 2), type_error_ok=True)
        frames_arg = pick(rng, (5, "01", 1.5, b"\x00"))
        ctx.note(f"argument type: frames = {frames_arg!r}")
        ctx.call("iter_fluoro(frames)", lambda: consume(iter_fluoro(path, frames=frames_arg), 2), type_error_ok=True)
        return
    # ------------------------------------------------------------- mutate
    bomb = name.startswith("bomb")
    mode = "none" if bomb and chance(rng, 0.7) else pick(rng, ("tags", "tags", "tags", "bytes", "both"))
    if mode in ("tags", "both"):
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in range(int(pick(rng, (1, 1, 2, 2, 3, 4)))):
            fn = TAG_MUTATORS[int(rng.choice(len(TAG_MUTATORS), p=_TM_P))][0]
            try:
                fn(rng, ds, ctx)
            except HarnessError:
                raise
            except Exception as exc:  # pydicom refused the edit: note it, go on
                ctx.note(f"  ({fn.__name__} not applied: {type(exc).__name__}: {str(exc)[:80]})")
        data = _write(ds)
    if mode in ("bytes", "both"):
        if chance(rng, 0.4):
            data = length_smash(rng, data, state["offsets"].get(name, []) if mode == "bytes" else
                                _element_offsets(data), ctx)
        if mode == "both" or chance(rng, 0.8):
            data = mutate_bytes(rng, data, ctx, protect=132 if chance(rng, 0.8) else 0)
    path.write_bytes(data)
    ctx.note(f"input {len(data)} bytes")
    # ------------------------------------------------------------- call
    shape = _header_shape(data)
    kw: dict[str, Any] = {}
    geometry_in_tags = name.startswith(("xa", "rf", "enhanced", "cine", "bomb"))
    if chance(rng, 0.25 if geometry_in_tags else 0.7) and shape is not None:
        r, c = shape
        if chance(rng, 0.85):
            kw["intrinsics"] = Intrinsics.centred(1000.0, 0.3, c, r)
        else:
            kw["intrinsics"] = Intrinsics.centred(1000.0, 0.3, c + 1, r * 2)
        ctx.note(f"intrinsics={kw['intrinsics'].width}x{kw['intrinsics'].height}")
    if chance(rng, 0.15):
        kw["detect_field"] = False
    if chance(rng, 0.2):
        kw["allow_non_projection"] = True
    if chance(rng, 0.08):
        kw["i0"] = pick(rng, (float("nan"), 0.0, -1.0, float("inf"), 1e-300, 1e300, 1.0))
        ctx.note(f"i0={kw['i0']}")
    if chance(rng, 0.05):
        kw["log_scale"] = pick(rng, (float("nan"), 0.0, -1.0, float("inf"), 1e-300, 1e300))
        ctx.note(f"log_scale={kw['log_scale']}")
    if chance(rng, 0.04):
        kw["calibration"] = pick(rng, state["profiles"] + ["no-such-profile", str(case_dir / "missing.json")])
        ctx.note(f"calibration={kw['calibration']!r}")
    frame = None if chance(rng, 0.7) else pick(rng, (0, 1, 2, -1, -2, 10 ** 9, -10 ** 9, np.int64(1), True, 1.0,
                                                      "0"))
    if kw:
        ctx.note("options " + ", ".join(f"{k}" for k in kw))
    ctx.call("read_fluoro", read_fluoro, path, frame, check=check_frame, **kw)
    if chance(rng, 0.25):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            ds = None
        if ds is not None:
            ctx.call("read_fluoro(Dataset)", read_fluoro, ds, frame, check=check_frame, **kw)
    frames = None if chance(rng, 0.8) else pick(rng, ([0, 1], [1], [0, 0, 0], [-1], [10 ** 12], range(3), []))
    ctx.call("iter_fluoro", lambda: consume(iter_fluoro(path, frames=frames, **kw), 2))
    # ------------------------------------------------------------- the CLIs on the same file
    if chance(rng, 0.05):
        from calib.cli import main as calib_main

        argv = ["info", str(path)] + (["--frame", str(pick(rng, (0, 1, -1, 99)))] if chance(rng, 0.3) else [])
        ctx.call("sopi-calib info", cli_call, calib_main, argv)
    if chance(rng, 0.03):
        from runtime.cli.register import main as register_main

        argv = ["--ct", str(state["ct"]), "--frame", str(path), "--out", str(case_dir / "out"), "--backend", "cpu",
                "--budget-ms", "300"]
        ctx.call("sopi-register", cli_call, register_main, argv)
