"""The ``ct`` fuzz campaign (`tools.fuzz`): `runtime.load_ct` / `runtime.load_mask` on mutated CT inputs.

Seeds (built once): the spine phantom (8 x 16 x 16 voxels, 2 mm, with its vertebra labels) as a DICOM
CT series (`runtime.synthetic.samples.write_ct_series`), as NIfTI-1 (.nii, .nii.gz) and NIfTI-2, and
as .npz (with and without an embedded mask and units); label masks as .npz and .nii.gz; and
"bombs", all within the default `calib.limits.Limits`: a 512^3 int16 NIfTI of zeros gzipped
(1.1 MB), a 512^3 uint8 .npz deflated (130 KB), a 400-slice 512 x 512 RLE DICOM series (3.8 MB), and
"at the limit" (2^29 voxels = ``max_ct_voxels``): a 512 x 512 x 2048 .nii.gz (4.7 MB) and a
2048 x 512 x 512 uint8 .npz (0.5 MB).

A case mutates one seed:

* DICOM series: tag values of one to three slices (positions, orientations, spacings, sizes,
  Number of Frames, rescale, tilt, Series Instance UID, SOP class, bits, transfer syntax, Pixel
  Data), slices deleted / duplicated, junk / hidden / empty files, sub-folders, symlinks (to
  /dev/zero, to itself, out of the folder), FIFOs, byte-level edits of a slice;
* NIfTI: header fields at their offsets (dim incl. huge / negative / 0, datatype incl. complex /
  RGB / unknown, bitpix, pixdim NaN / inf / 0 / negative, vox_offset, scl_slope / inter, q/sform
  codes, quaternion, srow, magic, sizeof_hdr), truncation, byte edits, gzip damage, wrong suffix;
* .npz: missing / extra members, object / complex / structured / big-endian / float16 dtypes,
  wrong ranks, NaN / inf values, bad affines, units, masks, crafted .npy headers declaring huge
  shapes, zip size fields that lie, byte edits of the archive.

Calls: `load_ct` (with no mask, a mask file, a mask array; ``units``, ``mu_water``, ``series_uid``,
``limits`` sometimes adversarial), `load_mask`; every Volume returned is checked (finite, >= 0,
3-D, finite non-singular affine, mask uint8 on the grid).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tools.fuzz_common import (ADVERSARIAL_NUMBERS, BadOutput, Ctx, chance, check_finite_array, cli_call, mutate_bytes,
                               pick)
from tools.fuzz_dicom import (_even, _raw_value, _set_raw, _vr_of, _write, m_bits, m_pixel, m_sop,
                              m_transfer_syntax)

CT_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
           "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "GantryDetectorTilt", "SeriesInstanceUID",
           "SliceLocation", "SpacingBetweenSlices", "InstanceNumber", "PhotometricInterpretation",
           "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleType", "Modality")


# ----------------------------------------------------------------------------------- seeds
def _nifti_bytes(img: Any) -> bytes:
    return img.to_bytes()


def _npz_bytes(compressed: bool = False, **arrays: Any) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def setup(workdir: Path, seed: int) -> dict:
    import nibabel as nib
    import pydicom  # noqa: F401

    from runtime.core.ct_io import load_ct, load_mask  # noqa: F401
    from runtime.core.volume import mu_to_hu
    from runtime.synthetic.phantom import make_phantom
    from runtime.synthetic.samples import write_ct_series

    workdir.mkdir(parents=True, exist_ok=True)
    vol = make_phantom(shape=(8, 16, 16), spacing=(2.0, 2.0, 2.5))
    hu = np.clip(np.rint(mu_to_hu(vol.data)), -1024, 3000)
    labels = vol.mask.astype(np.uint8)
    A = vol.affine
    series_dir = write_ct_series(workdir / "series", hu, A)
    series = [(p.name, p.read_bytes()) for p in sorted(series_dir.iterdir())]
    mask_dir = write_ct_series(workdir / "mask_series", labels.astype(np.float64), A, intercept=0.0)
    mask_series = [(p.name, p.read_bytes()) for p in sorted(mask_dir.iterdir())]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ A
    ijk = np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.int16)
    nii1 = _nifti_bytes(nib.Nifti1Image(ijk, ras))
    nii2 = _nifti_bytes(nib.Nifti2Image(ijk.astype(np.float32), ras))
    mask_nii = _nifti_bytes(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), ras))
    seeds = {
        "series": series, "mask_series": mask_series, "nii1": nii1, "nii2": nii2, "mask_nii": mask_nii,
        "npz": _npz_bytes(data=hu.astype(np.int16), affine=A),
        "npz_mask_units": _npz_bytes(data=vol.data, affine=A, mask=labels, units=np.array("mu")),
        "mask_npz": _npz_bytes(data=labels, affine=A),
        "shape": hu.shape, "affine": A, "labels": labels,
    }
    # bombs: small files that decode to large volumes, built without holding them in memory. Within
    # the default Limits: 512^3 (128 M voxels) and, "at the limit", 2^29 voxels (max_ct_voxels)
    seeds["bomb_nii_gz"] = _nifti_gz_zeros((512, 512, 512))
    seeds["bomb_npz"] = _npz_zeros((512, 512, 512))
    seeds["bomb_series"] = _rle_series(workdir / "bomb_series", 400, 512)
    seeds["bomb_limit_nii_gz"] = _nifti_gz_zeros((512, 512, 2048))
    seeds["bomb_limit_npz"] = _npz_zeros((2048, 512, 512))
    # a frame of the phantom and a start pose for sopi-register runs on the mutated CTs
    import json

    import runtime.cli.register  # noqa: F401
    from calib import Intrinsics, write_xa
    from runtime.synthetic.frames import pa_pose, synthesize_frame

    K = Intrinsics.perlove_plx118f(16)
    T = pa_pose(np.asarray(vol.centre() if callable(vol.centre) else vol.centre, float), 400.0)
    fr = synthesize_frame(vol, K, T, rng=np.random.default_rng(0), i0=float("inf"))
    seeds["frame"] = write_xa(workdir / "frame.dcm", fr.line_integrals, K, sod_mm=400.0)
    seeds["pose"] = workdir / "pose.json"
    seeds["pose"].write_text(json.dumps({"pose": T.tolist()}))
    return seeds


def _nifti_gz_zeros(shape: tuple[int, int, int]) -> bytes:
    """A gzipped int16 NIfTI-1 of zeros of ``shape`` (i, j, k), streamed (a few MB)."""
    import zlib

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    hdr.set_qform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    hdr["vox_offset"] = 352
    head = hdr.binaryblock + b"\0" * 4
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    out = [c.compress(head)]
    total, chunk = int(np.prod(shape)) * 2, bytes(1 << 24)
    while total > 0:
        out.append(c.compress(chunk[:min(total, len(chunk))]))
        total -= len(chunk)
    out.append(c.flush())
    return b"".join(out)


def _npz_zeros(shape: tuple[int, int, int]) -> bytes:
    """An .npz with a deflated uint8 'data' of zeros of ``shape`` and an identity 'affine', streamed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("data.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, "|u1"))
            total, chunk = int(np.prod(shape)), bytes(1 << 24)
            while total > 0:
                f.write(chunk[:min(total, len(chunk))])
                total -= len(chunk)
        z.writestr("affine.npy", _npy(np.eye(4)))
    return buf.getvalue()


def _rle_series(folder: Path, n: int, size: int) -> list[tuple[str, bytes]]:
    """``n`` RLE-compressed CT slices of ``size`` x ``size`` zeros (a few KB each)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from runtime.synthetic.samples import write_ct_series
    from tools.fuzz_dicom import _rle_zeros_frame

    tmpl = write_ct_series(folder, np.zeros((2, 2, 2)), np.diag([1.0, 1.0, 1.0, 1.0]))
    ds = pydicom.dcmread(sorted(tmpl.iterdir())[0])
    ds.Rows = ds.Columns = size
    ds.PixelData = encapsulate([_rle_zeros_frame(size, size)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    out = []
    for k in range(n):
        ds.ImagePositionPatient = ["0", "0", str(k)]
        ds.InstanceNumber = str(k + 1)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((f"s{k:04d}.dcm", buf.getvalue()))
    shutil.rmtree(folder, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------- DICOM series
def _ct_tag_mutation(rng, ds, ctx, fname: str) -> None:
    kw = pick(rng, CT_TAGS)
    vr = _vr_of(kw)
    k = int(rng.integers(6))
    if kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") and k < 3:
        n = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}[kw]
        if k == 0:
            vals = [str(pick(rng, ADVERSARIAL_NUMBERS)) for _ in range(n)]
        elif k == 1:
            vals = [str(pick(rng, (0, 1, -1, 0.5, 1e-12, 1e12))) for _ in range(int(pick(rng, (n, n, n - 1, n + 1))))]
        else:
            vals = ["0"] * n
        val = _even("\\".join(vals))
        _set_raw(ds, kw, "DS", val)
    elif k == 5:
        vr = pick(rng, ("US", "FD", "SQ", "UN", "OB", "CS"))
        val = _raw_value(rng, vr)
        _set_raw(ds, kw, vr, val)
    elif kw == "SeriesInstanceUID" and k < 4:
        val = _even(pick(rng, ("1.2.3", "1.2.3.4", "", "x" * 70)))
        _set_raw(ds, kw, "UI", val)
    else:
        val = _raw_value(rng, vr)
        _set_raw(ds, kw, vr, val)
    ctx.note(f"{fname}: {kw} ({vr}) = {val[:50]!r}")


def _series_case(rng, seeds: dict, key: str, folder: Path, ctx: Ctx) -> None:
    import pydicom

    files = list(seeds[key])
    folder.mkdir(parents=True, exist_ok=True)
    if not key.startswith("bomb"):
        # ------------------------------------------------- tag / byte edits of some slices
        for _ in range(int(pick(rng, (0, 1, 1, 2, 3)))):
            i = int(rng.integers(len(files)))
            fname, data = files[i]
            if chance(rng, 0.75):
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                for _ in range(int(pick(rng, (1, 1, 2)))):
                    k = int(rng.integers(10))
                    try:
                        if k < 6:
                            _ct_tag_mutation(rng, ds, ctx, fname)
                        elif k == 6:
                            m_pixel(rng, ds, ctx)
                        elif k == 7:
                            m_bits(rng, ds, ctx)
                        elif k == 8:
                            m_sop(rng, ds, ctx)
                        else:
                            m_transfer_syntax(rng, ds, ctx)
                    except Exception as exc:
                        ctx.note(f"  (edit not applied: {type(exc).__name__})")
                data = _write(ds)
            else:
                data = mutate_bytes(rng, data, ctx, protect=132 if chance(rng, 0.7) else 0)
            files[i] = (fname, data)
        # ------------------------------------------------- structure
        for _ in range(int(pick(rng, (0, 0, 1, 2)))):
            k = int(rng.integers(6))
            if k == 0 and files:
                n_del = int(pick(rng, (1, 1, 2, len(files) - 1, len(files) - 2, len(files))))
                for _ in range(max(0, min(n_del, len(files)))):
                    files.pop(int(rng.integers(len(files))))
                ctx.note(f"series: {len(files)} slices left")
            elif k == 1 and files:
                f = pick(rng, files)
                files.append(("dup_" + f[0], f[1]))
                ctx.note(f"series: {f[0]} duplicated")
            elif k == 2:
                junk = bytes(rng.integers(0, 256, int(pick(rng, (0, 10, 200, 5000))), dtype=np.uint8))
                nm = pick(rng, ("junk.dcm", "README.txt", ".hidden.dcm", "DICOMDIR", "noext", "x.IMA"))
                if chance(rng, 0.3):
                    junk = b"\0" * 128 + b"DICM" + junk
                files.append((nm, junk))
                ctx.note(f"series: junk file {nm} ({len(junk)} bytes)")
            elif k == 3 and files:
                # a slice of the mask series (another Series Instance UID) mixed in
                other = pick(rng, seeds["mask_series"])
                files.append(("other_" + other[0], other[1]))
                ctx.note("series: a slice of another series mixed in")
            elif k == 4:
                files.append(("empty.dcm", b""))
                ctx.note("series: an empty .dcm file")
            else:
                files.append(("__subdir__", b""))
    for fname, data in files:
        if fname == "__subdir__":
            (folder / "sub").mkdir(exist_ok=True)
            (folder / "sub" / "slice.dcm").write_bytes(seeds["series"][0][1])
            ctx.note("series: a sub-folder with a slice")
            continue
        (folder / fname).write_bytes(data)
    if chance(rng, 0.08):
        k = int(rng.integers(5))
        try:
            if k == 0:
                os.symlink("/dev/zero", folder / "zero.dcm")
                ctx.note("series: symlink zero.dcm -> /dev/zero")
            elif k == 1:
                os.symlink(folder / "self.dcm", folder / "self.dcm")
                ctx.note("series: symlink loop self.dcm")
            elif k == 2:
                os.mkfifo(folder / "fifo.dcm")
                ctx.note("series: FIFO fifo.dcm")
            elif k == 3:
                os.symlink("/etc/hostname", folder / "host.dcm")
                ctx.note("series: symlink host.dcm -> /etc/hostname")
            else:
                os.symlink(folder, folder / "loopdir")
                ctx.note("series: symlink loopdir -> the folder")
        except OSError:
            pass


# ----------------------------------------------------------------------------------- NIfTI
# (offset, struct format, name) of NIfTI-1 header fields
NII1_FIELDS = ((0, "<i", "sizeof_hdr"), (40, "<h", "dim[0]"), (42, "<h", "dim[1]"), (44, "<h", "dim[2]"),
               (46, "<h", "dim[3]"), (48, "<h", "dim[4]"), (50, "<h", "dim[5]"), (70, "<h", "datatype"),
               (72, "<h", "bitpix"), (76, "<f", "pixdim[0]"), (80, "<f", "pixdim[1]"), (84, "<f", "pixdim[2]"),
               (88, "<f", "pixdim[3]"), (108, "<f", "vox_offset"), (112, "<f", "scl_slope"), (116, "<f", "scl_inter"),
               (252, "<h", "qform_code"), (254, "<h", "sform_code"), (256, "<f", "quatern_b"),
               (260, "<f", "quatern_c"), (264, "<f", "quatern_d"), (268, "<f", "qoffset_x"),
               (280, "<f", "srow_x[0]"), (284, "<f", "srow_x[1]"), (296, "<f", "srow_y[0]"), (300, "<f", "srow_y[1]"),
               (312, "<f", "srow_z[0]"), (324, "<f", "srow_z[3]"), (123, "<B", "dim_info"), (122, "<B", "slice_code"))
# NIfTI-2 (540-byte header): sizeof_hdr, dim int64[8] at 16, datatype at 12, pixdim double[8] at 104,
# vox_offset int64 at 168, scl_slope / inter doubles at 176 / 184, srow_x at 400
NII2_FIELDS = ((0, "<i", "sizeof_hdr"), (16, "<q", "dim[0]"), (24, "<q", "dim[1]"), (32, "<q", "dim[2]"),
               (40, "<q", "dim[3]"), (48, "<q", "dim[4]"), (12, "<h", "datatype"), (14, "<h", "bitpix"),
               (112, "<d", "pixdim[1]"), (120, "<d", "pixdim[2]"), (128, "<d", "pixdim[3]"), (168, "<q", "vox_offset"),
               (176, "<d", "scl_slope"), (184, "<d", "scl_inter"), (344, "<i", "qform_code"), (348, "<i", "sform_code"),
               (400, "<d", "srow_x[0]"), (432, "<d", "srow_y[1]"), (464, "<d", "srow_z[2]"))
DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 9999, -1)


def _field_value(rng, fmt: str, name: str) -> Any:
    if name == "datatype":
        return int(pick(rng, DATATYPES))
    if name.startswith("dim"):
        pool = (0, -1, 1, 2, 3, 4, 5, 7, 8, 9, 100, 512, 1024, 32767, -32768, 65535)
        if fmt == "<q":
            pool = pool + (2 ** 31, 2 ** 40, 2 ** 62, -(2 ** 62))
        return int(pick(rng, pool))
    if fmt in ("<f", "<d"):
        return float(pick(rng, (float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e-38, 1e38, 3.4e38, 1e-6,
                                 2.0, 1e9, 352.0, -352.0, 1e20)))
    v = int(pick(rng, ADVERSARIAL_NUMBERS[:16]))
    lo, hi = {"<h": (-32768, 32767), "<i": (-2 ** 31, 2 ** 31 - 1), "<q": (-2 ** 63, 2 ** 63 - 1),
              "<B": (0, 255)}[fmt]
    return min(max(v, lo), hi)


def _nifti_case(rng, seeds: dict, key: str, path_dir: Path, ctx: Ctx) -> Path:
    data = bytearray(seeds[key])
    gz_input = key.startswith("bomb")
    if gz_input:
        suffix = ".nii.gz"
    else:
        fields = NII2_FIELDS if key == "nii2" else NII1_FIELDS
        for _ in range(int(pick(rng, (0, 1, 1, 2, 3)))):
            off, fmt, name = pick(rng, fields)
            v = _field_value(rng, fmt, name)
            try:
                struct.pack_into(fmt, data, off, v)
            except struct.error:
                continue
            ctx.note(f"nifti {name} = {v}")
        if chance(rng, 0.1):
            m = pick(rng, (b"n+2\0", b"ni1\0", b"\0\0\0\0", b"n+1\0"))
            off = 344 if key != "nii2" else 4
            data[off:off + 4] = m
            ctx.note(f"nifti magic = {m!r}")
        if chance(rng, 0.1):  # byte-swapped header
            data[0:4] = data[0:4][::-1]
            ctx.note("nifti sizeof_hdr byte-swapped")
        if chance(rng, 0.25):
            data = bytearray(mutate_bytes(rng, bytes(data), ctx))
        suffix = pick(rng, (".nii", ".nii", ".nii.gz", ".nii.gz", ".NII", ".nii.GZ"))
        if suffix.lower().endswith(".gz") and chance(rng, 0.9):
            data = bytearray(gzip.compress(bytes(data), compresslevel=1))
            if chance(rng, 0.15):
                data = bytearray(mutate_bytes(rng, bytes(data), ctx, n_ops=1))
                ctx.note("gzip stream damaged")
        elif suffix.lower().endswith(".gz"):
            ctx.note("named .nii.gz but not gzipped")
    p = path_dir / ("ct" + suffix)
    p.write_bytes(bytes(data))
    return p


# ----------------------------------------------------------------------------------- npz
def _npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(members: list[tuple[str, bytes]], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _npy(arr: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _lie_sizes(data: bytes, member: str, size: int) -> bytes:
    """Patch the uncompressed-size fields of ``member`` (local and central headers) of a zip."""
    buf = bytearray(data)
    name = member.encode()
    # (signature, offset of the name length, of the name, of the uncompressed size)
    for sig, len_at, name_at, size_at in ((b"PK\x03\x04", 26, 30, 22), (b"PK\x01\x02", 28, 46, 24)):
        i = buf.find(sig)
        while i >= 0:
            n = struct.unpack_from("<H", buf, i + len_at)[0]
            if bytes(buf[i + name_at:i + name_at + n]) == name:
                struct.pack_into("<I", buf, i + size_at, size & 0xFFFFFFFF)
            i = buf.find(sig, i + 4)
    return bytes(buf)


def _npz_edit(rng, members: dict, raw_members: dict, hu, A, shape, seeds: dict, ctx: Ctx) -> None:
    k = int(rng.integers(14))
    if k == 0:
        m = pick(rng, ("data", "affine"))
        members.pop(m, None)
        ctx.note(f"npz: no '{m}'")
    elif k == 1:
        dt = pick(rng, (np.complex64, np.float16, ">f4", np.bool_, np.uint64, np.float64, "<U3", "datetime64[s]",
                        [("a", "<f4"), ("b", "<i2")], object, np.longdouble))
        try:
            members["data"] = np.asarray(members.get("data", hu), dtype=dt)
        except (TypeError, ValueError):
            members["data"] = np.zeros(shape, dtype=dt)
        ctx.note(f"npz: data dtype {np.dtype(dt)}")
    elif k == 2:
        new_shape = pick(rng, ((8, 16), (8, 16, 16, 1), (0, 16, 16), (1, 1, 1), (1, 16, 16), (2, 2, 2), (16,)))
        members["data"] = np.zeros(new_shape, np.float32)
        ctx.note(f"npz: data shape {new_shape}")
    elif k == 3:
        d = np.asarray(members.get("data", hu), np.float32).copy()
        d.flat[int(rng.integers(d.size))] = pick(rng, (np.nan, np.inf, -np.inf, 3.4e38, -3.4e38))
        members["data"] = d
        ctx.note("npz: a non-finite / extreme voxel")
    elif k == 4:
        a = A.copy()
        how = int(rng.integers(6))
        if how == 0:
            a[:3, :3] = 0
        elif how == 1:
            a[0, 0] = np.nan
        elif how == 2:
            a = a[:3]
        elif how == 3:
            a[:3, 0] = a[:3, 1]
        elif how == 4:
            a[:3, :3] *= 1e-12
        else:
            a[:3, 3] = 1e308
        members["affine"] = a
        ctx.note(f"npz: affine edit {how}")
    elif k == 5:
        u = pick(rng, (np.array("mu"), np.array("xx"), np.array(b"hu"), np.array(["hu", "mu"]), np.array(3),
                       np.array("h" * 1000), np.array("")))
        members["units"] = u
        ctx.note(f"npz: units {u!r:.40}")
    elif k == 6:
        mk = pick(rng, (np.zeros((2, 2, 2), np.uint8), np.full(shape, 300, np.int32), np.full(shape, -1, np.int8),
                        np.full(shape, np.nan), np.full(shape, 0.5), np.ones(shape, bool),
                        np.array([None] * 8, object)))
        members["mask"] = mk
        ctx.note(f"npz: mask {mk.dtype} {mk.shape}")
    elif k == 7:
        big = pick(rng, ((100000, 100000, 100000), (2 ** 20, 2 ** 20, 2 ** 10), (512, 512, 2049), (1024, 1024, 512),
                         (-1, 16, 16), (2 ** 62, 2, 2)))
        m = pick(rng, ("data", "data", "mask", "affine"))
        try:
            raw_members[m] = _npy_header(big, pick(rng, ("<f4", "<i2", "|u1", "<f8"))) + b"\0" * 64
        except Exception:
            return
        ctx.note(f"npz: '{m}.npy' header declares shape {big}")
    elif k == 8:
        members["extra_" + str(int(rng.integers(100)))] = np.zeros(3)
        ctx.note("npz: extra member")
    elif k == 9:
        members["data"] = np.array([{"a": 1}, [1, 2]], dtype=object)
        ctx.note("npz: data is an object (pickled) array")
    elif k == 10:
        d = np.asarray(members.get("data", hu), np.float32)
        members["data"] = np.asfortranarray(d)
        ctx.note("npz: data Fortran-ordered")
    elif k == 11:
        members["data"] = (np.asarray(members.get("data", hu), np.float64) * 1e300)
        members["units"] = np.array("mu")
        ctx.note("npz: data x 1e300 (overflows float32) as mu")
    elif k == 12:
        members["data"] = np.asarray(members.get("data", hu), np.float32) - 2000.0
        members["units"] = np.array("mu")
        ctx.note("npz: negative mu")
    else:
        ctx.note("npz: (no member change)")


def _npz_case(rng, seeds: dict, key: str, path_dir: Path, ctx: Ctx) -> Path:
    p = path_dir / "ct.npz"
    if key.startswith("bomb"):
        p.write_bytes(seeds[key])
        return p
    shape, A = seeds["shape"], seeds["affine"]
    hu = np.full(shape, 0.0, np.float32)
    hu[2:6, 4:12, 4:12] = 500.0
    members: dict[str, Any] = {"data": hu.astype(np.int16), "affine": A.copy()}
    if key == "npz_mask_units":
        members["mask"] = seeds["labels"]
        members["units"] = np.array("hu")
    raw_members: dict[str, bytes] = {}
    for _ in range(int(pick(rng, (1, 1, 2, 3)))):
        try:
            _npz_edit(rng, members, raw_members, hu, A, shape, seeds, ctx)
        except Exception as exc:  # an edit that does not apply to what an earlier one left
            ctx.note(f"  (npz edit not applied: {type(exc).__name__})")
    zmembers = []
    for name, arr in members.items():
        zmembers.append((name + ".npy", raw_members.pop(name, None) or _npy(arr)))
    for name, raw in raw_members.items():
        zmembers.append((name + ".npy", raw))
    data = _zip(zmembers, compress=chance(rng, 0.3))
    if chance(rng, 0.12):
        size = int(pick(rng, (2 ** 31 - 1, 2 ** 32 - 1, 10 ** 9, 1)))
        data = _lie_sizes(data, pick(rng, ("data.npy", "affine.npy")), size)
        ctx.note(f"npz: zip size field of a member = {size}")
    if chance(rng, 0.12):
        data = mutate_bytes(rng, data, ctx)
    p.write_bytes(data)
    return p


# ----------------------------------------------------------------------------------- checks
def check_volume(v: Any) -> None:
    from runtime.core.volume import Volume

    if not isinstance(v, Volume):
        raise BadOutput(f"load_ct returned a {type(v).__name__}")
    if v.data.ndim != 3 or v.data.dtype != np.float32:
        raise BadOutput(f"volume data {v.data.dtype} {v.data.shape}")
    check_finite_array(v.data, "volume.data")
    if v.data.size and float(v.data.min()) < 0:
        raise BadOutput(f"volume.data has negative attenuation {float(v.data.min())}")
    check_finite_array(v.affine, "volume.affine")
    if v.affine.shape != (4, 4) or abs(np.linalg.det(v.affine[:3, :3])) < 1e-12:
        raise BadOutput("volume.affine singular or not 4x4")
    if v.mask is not None and (v.mask.shape != v.data.shape or v.mask.dtype != np.uint8):
        raise BadOutput(f"volume.mask {v.mask.dtype} {v.mask.shape} vs data {v.data.shape}")


def check_mask(m: Any) -> None:
    if not isinstance(m, np.ndarray) or m.dtype != np.uint8 or m.ndim != 3:
        raise BadOutput(f"load_mask returned {type(m).__name__} {getattr(m, 'dtype', None)} "
                        f"{getattr(m, 'shape', None)}")


# ----------------------------------------------------------------------------------- case
KINDS = (("series", 3.0), ("nii1", 2.0), ("nii2", 1.0), ("npz", 2.0), ("npz_mask_units", 1.0),
         ("bomb_nii_gz", 0.1), ("bomb_npz", 0.1), ("bomb_series", 0.06), ("bomb_limit_nii_gz", 0.02),
         ("bomb_limit_npz", 0.02))
_KP = np.array([w for _, w in KINDS]) / sum(w for _, w in KINDS)


def _make_input(rng, seeds: dict, key: str, where: Path, ctx: Ctx) -> Path:
    if key in ("series", "mask_series", "bomb_series"):
        folder = where / "series"
        _series_case(rng, seeds, key, folder, ctx)
        return folder
    if key.startswith(("nii", "mask_nii", "bomb_nii")):
        return _nifti_case(rng, seeds, key, where, ctx)
    return _npz_case(rng, seeds, key, where, ctx)


def run_case(seeds: dict, rng: np.random.Generator, case_dir: Path, ctx: Ctx) -> None:
    from calib.limits import Limits
    from runtime.core.ct_io import load_ct, load_mask

    key = KINDS[int(rng.choice(len(KINDS), p=_KP))][0]
    ctx.note(f"seed {key}")
    if chance(rng, 0.03):  # argument types
        bad = pick(rng, (None, 7, b"ct.npz", ["a"], 1.5, object()))
        ctx.note(f"argument type: path = {type(bad).__name__}")
        ctx.call("load_ct", load_ct, bad, type_error_ok=True, check=check_volume)
        ctx.call("load_mask", load_mask, bad, type_error_ok=True, check=check_mask)
        p = _make_input(rng, seeds, "npz", case_dir, ctx)
        m = pick(rng, (7, b"x", ["m"], 2.5))
        ctx.note(f"argument type: mask = {type(m).__name__}")
        ctx.call("load_ct(mask)", load_ct, p, mask=m, type_error_ok=True, check=check_volume)
        s = pick(rng, (5, b"1.2", ["1.2"]))
        ctx.note(f"argument type: series_uid = {type(s).__name__}")
        ctx.call("load_ct(series_uid)", load_ct, p, series_uid=s, type_error_ok=True, check=check_volume)
        return
    path = _make_input(rng, seeds, key, case_dir, ctx)
    kw: dict[str, Any] = {}
    k = int(rng.integers(10))
    if k <= 1:  # a mask file, possibly mutated
        mkey = pick(rng, ("mask_npz", "mask_nii", "mask_series"))
        mdir = case_dir / "mask"
        mdir.mkdir()
        if chance(rng, 0.5):
            ctx.note(f"mask seed {mkey} mutated")
            kw["mask"] = _make_input(rng, seeds, {"mask_npz": "npz", "mask_nii": "nii1", "mask_series": "series"}[mkey]
                                     if chance(rng, 0.5) else mkey, mdir, ctx)
        else:
            ctx.note(f"mask {mkey}")
            if mkey == "mask_series":
                folder = mdir / "series"
                folder.mkdir()
                for fn, b in seeds["mask_series"]:
                    (folder / fn).write_bytes(b)
                kw["mask"] = folder
            else:
                p = mdir / ("mask.npz" if mkey == "mask_npz" else "mask.nii")
                p.write_bytes(seeds[mkey])
                kw["mask"] = p
    elif k == 2:  # a mask array
        shape = seeds["shape"]
        kw["mask"] = pick(rng, (np.zeros(shape, np.uint8), np.ones((2, 2, 2)), np.full(shape, np.nan),
                                np.full(shape, 999), np.full(shape, -3), np.zeros(shape, object), np.zeros((0,)),
                                np.ones(shape, bool), np.full(shape, 1.5)))
        ctx.note(f"mask array {kw['mask'].dtype} {kw['mask'].shape}")
    if chance(rng, 0.1):
        kw["units"] = pick(rng, ("mu", "HU", "", "kelvin", None, 3))
    if chance(rng, 0.08):
        kw["mu_water"] = pick(rng, (0.0, -1.0, float("nan"), float("inf"), 1e-300, 1e300, True, "0.02"))
    if chance(rng, 0.08):
        kw["series_uid"] = pick(rng, ("1.2.3", "", "x" * 100))
    if chance(rng, 0.06):
        kw["limits"] = Limits(max_ct_voxels=int(pick(rng, (1, 1000, 2047, 2048))))
    if kw:
        ctx.note("options " + ", ".join(f"{k}={v!r:.40}" for k, v in kw.items() if k != "mask"))
    ctx.call("load_ct", load_ct, path, check=check_volume, **kw)
    if chance(rng, 0.04):
        from runtime.cli.register import main as register_main

        argv = ["--ct", str(path), "--frame", str(seeds["frame"]), "--init", str(seeds["pose"]), "--out",
                str(case_dir / "out"), "--backend", "cpu", "--budget-ms", "300"]
        if isinstance(kw.get("mask"), Path):
            argv += ["--mask", str(kw["mask"])]
        ctx.call("sopi-register", cli_call, register_main, argv)
    if chance(rng, 0.3):
        ctx.call("load_mask", load_mask, path, like_affine=pick(rng, (None, seeds["affine"], np.eye(3),
                                                                        np.full((4, 4), np.nan))),
                 check=check_mask)
