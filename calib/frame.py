"""`FluoroFrame`: one X-ray projection frame in the line-integral domain, with its geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import DicomGeometryError
from calib.geometry import Intrinsics
from calib.rotations import rot_x, rot_z

__all__ = ["FluoroFrame", "pose_from_positioner"]

# camera axes in LPS at primary = secondary = 0 (PA view: source posterior, detector anterior, image as
# seen from the source): x_cam = patient right (-x LPS), y_cam = feet (-z LPS), z_cam = anterior (-y LPS)
_R0_CT_FROM_CAM = np.array([[-1.0, 0.0, 0.0],
                            [0.0, 0.0, -1.0],
                            [0.0, -1.0, 0.0]])


def pose_from_positioner(primary_deg: float, secondary_deg: float, sod_mm: float,
                         isocentre_lps: np.ndarray) -> np.ndarray:
    """``T_cam_from_ct`` of a C-arm at patient-relative positioner angles.

    DICOM (PS3.3 C.8.7.5.1.2): both angles 0 = PA beam (patient faces the detector); primary +90 =
    LAO (detector at the patient's left), secondary + = cranial (detector toward the head). The
    source-to-detector direction is ``d = (cos b sin a, -cos b cos a, sin b)`` in LPS; the source sits
    at ``isocentre - sod * d``; image rows run toward the feet at 0/0 and image columns toward the
    patient's right (seen from the source). LPS of the CT is taken as the patient frame (the CT's
    patient coordinates and the C-arm's patient-relative angles refer to the same patient).
    """
    a, b = math.radians(primary_deg), math.radians(secondary_deg)
    R_ct_from_cam = rot_z(a) @ rot_x(-b) @ _R0_CT_FROM_CAM
    c = np.asarray(isocentre_lps, dtype=np.float64).reshape(3)
    d = R_ct_from_cam[:, 2]
    source = c - float(sod_mm) * d
    T = np.eye(4)
    T[:3, :3] = R_ct_from_cam.T
    T[:3, 3] = -R_ct_from_cam.T @ source
    return T


@dataclass
class FluoroFrame:
    """One fluoroscopy / radiography frame, ready for registration.

    ``image`` is as seen from the source (what ``intrinsics.K`` predicts); ``raw`` is the frame as
    stored in the file (before flips/rotations, before the Modality LUT).
    """

    image: np.ndarray
    # (H, W) float32 line integrals -ln(I/I0), as seen from the source (undistorted if a calibration was given)
    raw: np.ndarray
    # stored pixel values of this frame, before any flip / rotation / LUT
    valid: np.ndarray
    # (H, W) bool, False outside shutters / collimator and at impossible values (same orientation as image)
    intrinsics: Intrinsics
    # pinhole intrinsics matching image (tags, intrinsics= override, or calibration)
    mirrored: bool = False
    # True when the reader flipped the stored frame horizontally to get the view from the source
    rotation_deg: int = 0
    # clockwise rotation of the stored frame relative to the detector that the reader undid
    source: str | None = None
    # file path, or None for a Dataset passed in memory
    sop_class_uid: str = ""
    # SOP Class UID
    sop_class: str = ""
    # short name: XA, XRF, EnhancedXA, EnhancedXRF, DX, CR, ...
    modality: str = ""
    # Modality (0008,0060)
    frame_index: int = 0
    # 0-based frame number in the object
    n_frames: int = 1
    # Number of Frames (1 for single-frame objects)
    frame_time_ms: float | None = None
    # nominal time between frames (Frame Time, or Frame Time Vector entry, or 1000 / Cine Rate)
    time_offset_ms: float | None = None
    # time of this frame relative to the first frame
    positioner_primary_deg: float | None = None
    # patient-relative primary angle, + = LAO (detector at patient's left), -180..180
    positioner_secondary_deg: float | None = None
    # patient-relative secondary angle, + = cranial, -90..90
    sod_mm: float | None = None
    # Distance Source to Patient (isocentre), or Distance Source to Isocenter (enhanced)
    pixel_intensity_relationship: str = ""
    # PIR as stored ("LIN", "LOG", "DISP", ...; "" when absent)
    pixel_intensity_sign: int = 1
    # Sign used (+1: higher value = more intensity)
    photometric: str = ""
    # Photometric Interpretation
    i0: float | None = None
    # unattenuated intensity used for the log (linear units for LIN data, modality units for LOG)
    intrinsics_source: str = "tags"
    # "tags", "intrinsics", "calibration", or "tags(PixelSpacing)" when Pixel Spacing had to be used
    undistorted: bool = False
    # True when a calibration's distortion model was applied to image/valid
    warnings: list[str] = field(default_factory=list)
    # every assumption and repair the reader made
    tags: dict[str, Any] = field(default_factory=dict)
    # selected raw tag values (for reporting)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    def initial_pose(self, volume: Any, *, sod_mm: float | None = None) -> np.ndarray:
        """Coarse ``T_cam_from_ct`` from the positioner angles, the CT centre at the isocentre.

        Assumptions (documented in docs/dicom.md): the angles are patient-relative as DICOM defines
        them (mobile C-arms often write equipment angles or zeros: a warning is not possible from the
        tags, treat the result as a hint); missing angles count as 0 (PA); the CT's centre
        (``volume.centre``, LPS mm) lies at the isocentre; SOD is ``sod_mm``, else the frame's
        Distance Source to Patient, else 0.6 x SDD. Table offsets are ignored.
        """
        centre = getattr(volume, "centre", None)
        if callable(centre):
            centre = centre()
        if centre is None:
            centre = volume
        centre = np.asarray(centre, dtype=np.float64).reshape(-1)
        if centre.shape != (3,) or not np.isfinite(centre).all():
            raise DicomGeometryError("initial_pose needs a volume with a finite .centre (LPS mm, 3 values)")
        sod = sod_mm if sod_mm is not None else self.sod_mm
        if sod is None or not (sod > 0):
            sod = 0.6 * self.intrinsics.sdd_mm
        return pose_from_positioner(self.positioner_primary_deg or 0.0, self.positioner_secondary_deg or 0.0,
                                    float(sod), centre)

    def __repr__(self) -> str:  # short: the arrays are large
        name = Path(self.source).name if self.source else "<dataset>"
        return (f"FluoroFrame({name}, {self.sop_class or self.modality}, frame {self.frame_index + 1}/"
                f"{self.n_frames}, {self.image.shape[1]}x{self.image.shape[0]}, mirrored={self.mirrored}, "
                f"PIR={self.pixel_intensity_relationship or '-'}, {len(self.warnings)} warnings)")
