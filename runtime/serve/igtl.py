"""`IgtlSink`: poses to navigation software over OpenIGTLink (pyigtl; 3D Slicer's OpenIGTLinkIF
connects to it as a client).

Per record: a TRANSFORM (device ``device_name``, default "CTToCArm") only when the pose is accepted,
and always a STRING (device "SopiStatus") with the outcome, status, confidence and latency; the
service's health line every second as a STRING (device "SopiHealth").

The TRANSFORM is ``T_cam_from_ct @ diag(-1, -1, 1, 1)``: it maps the CT in Slicer's RAS coordinates
(a DICOM / NIfTI CT loaded in Slicer) to the C-arm camera frame (mm; x along the detector columns,
y along the rows, z along the beam from the source). In Slicer, put the CT under the transform node:
it then appears where the C-arm sees it. Messages are queued only while a client is connected (a
client that connects late gets the next pose, not a backlog).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from runtime.serve.records import FrameRecord

__all__ = ["IgtlSink", "RAS_TO_LPS", "igtl_matrix"]

log = logging.getLogger("sopi.serve")

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def igtl_matrix(T_cam_from_ct: np.ndarray) -> np.ndarray:
    """The 4x4 sent: camera <- CT(RAS)."""
    return np.asarray(T_cam_from_ct, dtype=np.float64) @ RAS_TO_LPS


class IgtlSink:
    """An OpenIGTLink server on 127.0.0.1:``port`` (pyigtl 0.3.4 cannot listen on another interface
    on Linux; a navigation workstation elsewhere reaches it through a forwarded port)."""

    def __init__(self, port: int = 18944, *, device_name: str = "CTToCArm") -> None:
        try:
            import pyigtl
        except ImportError:
            raise RuntimeError("OpenIGTLink output needs pyigtl: pip install 'sopi[serve]'") from None
        import signal

        self._pyigtl = pyigtl
        self.device_name = device_name
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        # pyigtl's server installs its own SIGINT / SIGTERM handlers: keep the host's
        try:
            self.server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        except OSError as exc:
            raise OSError(f"OpenIGTLink port {port}: cannot listen ({exc})") from None
        for s, h in saved.items():
            signal.signal(s, h)
        self.port = port

    def _send(self, message: Any) -> None:
        if self.server.is_connected():
            self.server.send_message(message, wait=False)

    def write(self, record: FrameRecord) -> None:
        res = record.result or {}
        if record.outcome == "accepted" and res.get("pose") is not None:
            self._send(self._pyigtl.TransformMessage(igtl_matrix(np.array(res["pose"])), device_name=self.device_name))
        conf = (res.get("confidence") or {}).get("score")
        text = (f"seq={record.seq} outcome={record.outcome} status={res.get('status', '')} "
                f"confidence={'' if conf is None else f'{conf:.3f}'} latency_ms={record.latency_ms:.1f} "
                f"source={record.source_id}" + (f" reason={record.reason}" if record.reason else ""))
        self._send(self._pyigtl.StringMessage(text, device_name="SopiStatus"))

    def health(self, text: str) -> None:
        self._send(self._pyigtl.StringMessage(text, device_name="SopiHealth"))

    def close(self) -> None:
        self.server.stop()
