"""Results of the projector: `Render` (what `Projector.render` returns) and `DeviceArray` (a
float32 buffer in device memory, for zero-copy handoff from the cuda backend)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.geometry import Intrinsics

__all__ = ["Render", "DeviceArray"]


@dataclass(frozen=True)
class DeviceArray:
    """A float32 array living in device memory (cuda backend), for zero-copy handoff.

    ``ptr`` is the device address (e.g. ORT ``IOBinding.bind_output(..., buffer_ptr=ptr)`` or
    TensorRT ``context.set_tensor_address(name, ptr)``), valid while this object (or the `Render`
    holding it) is alive; the data is ready in stream order on ``stream_handle`` (CUstream as int).
    ``__cuda_array_interface__`` lets CuPy / numba.cuda / torch view it without a copy.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device_id: int
    stream_handle: int
    owner: object
    # keeps the underlying device allocation alive

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str,
                "data": (int(self.ptr), False), "version": 3,
                "stream": int(self.stream_handle) or None}

    def numpy(self) -> np.ndarray:
        """Synchronous copy to a new host array."""
        return self.owner.to_numpy(self)  # type: ignore[attr-defined]


class Render:
    """Result of `Projector.render`.

    ``image`` (H, W) float32, ``jacobian`` (6, H, W) float32 or None, ``mask`` (H, W) float32 or
    None; for the cuda backend these are host copies made on first access, and ``device_image``,
    ``device_jacobian``, ``device_mask`` are the device buffers (None on the cpu backend).
    ``intrinsics`` are those of the rendered level, ``roi`` the rendered window (v0, v1, u0, u1).
    """

    __slots__ = ("intrinsics", "roi", "binning", "step_mm", "backend", "pose",
                 "_image", "_jacobian", "_mask",
                 "device_image", "device_jacobian", "device_mask")

    def __init__(self, *, intrinsics: Intrinsics, roi: tuple[int, int, int, int], binning: int,
                 step_mm: float, backend: str, pose: np.ndarray,
                 image=None, jacobian=None, mask=None,
                 device_image=None, device_jacobian=None, device_mask=None) -> None:
        self.intrinsics = intrinsics
        self.roi = roi
        self.binning = binning
        self.step_mm = step_mm
        self.backend = backend
        self.pose = pose
        self._image = image
        self._jacobian = jacobian
        self._mask = mask
        self.device_image = device_image
        self.device_jacobian = device_jacobian
        self.device_mask = device_mask

    @property
    def shape(self) -> tuple[int, int]:
        v0, v1, u0, u1 = self.roi
        return (v1 - v0, u1 - u0)

    @property
    def image(self) -> np.ndarray:
        if self._image is None and self.device_image is not None:
            self._image = self.device_image.numpy()
        return self._image

    @property
    def jacobian(self) -> np.ndarray | None:
        if self._jacobian is None and self.device_jacobian is not None:
            self._jacobian = self.device_jacobian.numpy()
        return self._jacobian

    @property
    def mask(self) -> np.ndarray | None:
        if self._mask is None and self.device_mask is not None:
            self._mask = self.device_mask.numpy()
        return self._mask

    def __repr__(self) -> str:
        return (f"Render(backend={self.backend!r}, shape={self.shape}, binning={self.binning}, "
                f"jacobian={self._jacobian is not None or self.device_jacobian is not None})")
