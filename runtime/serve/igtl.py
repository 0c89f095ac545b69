"""`IgtlSink`: poses to navigation software over OpenIGTLink (pyigtl; 3D Slicer's OpenIGTLinkIF
connects to it as a client).

Per record: a TRANSFORM (device ``device_name``, default "CTToCArm") only when the pose is accepted,
and always a STRING (device "SopiStatus") with the outcome, status, confidence and latency; the
service's health line every second as a STRING (device "SopiHealth").

The TRANSFORM is ``T_cam_from_ct @ diag(-1, -1, 1, 1)``: it maps the CT in Slicer's RAS coordinates
(a DICOM / NIfTI CT loaded in Slicer) to the C-arm camera frame (mm; x along the detector columns,
y along the rows, z along the beam from the source). In Slicer, put the CT under the transform node:
it then appears where the C-arm sees it. Messages go only to the clients connected at the time (a
client that connects late gets the next pose, not a backlog).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any

import numpy as np

from runtime.serve.records import FrameRecord, Overlay

__all__ = ["IgtlSink", "RAS_TO_LPS", "igtl_matrix"]

log = logging.getLogger("sopi.serve")

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def igtl_matrix(T_cam_from_ct: np.ndarray) -> np.ndarray:
    """The 4x4 sent: camera <- CT(RAS)."""
    return np.asarray(T_cam_from_ct, dtype=np.float64) @ RAS_TO_LPS


class IgtlSink:
    """An OpenIGTLink server on ``host``:``port`` (default 127.0.0.1; "0.0.0.0" for every
    interface). Any number of clients; each message goes to every connected client; a client that
    disconnects (or stalls for a second) is dropped and may reconnect. Messages are packed by
    pyigtl; the connections are ours (pyigtl's server serves one client, notices a departure only
    on the next failed send and cannot bind a non-loopback interface on Linux)."""

    def __init__(self, port: int = 18944, *, device_name: str = "CTToCArm", host: str = "127.0.0.1") -> None:
        try:
            import pyigtl
        except ImportError:
            raise RuntimeError("OpenIGTLink output needs pyigtl: pip install 'sopi[serve]'") from None
        self._pyigtl = pyigtl
        self.device_name = device_name
        try:
            self._sock = socket.create_server((host, port))
        except OSError as exc:
            raise OSError(f"OpenIGTLink {host}:{port}: cannot listen ({exc})") from None
        self.port = self._sock.getsockname()[1]
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sopi-igtl", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept clients; read and discard what they send; notice when they leave."""
        while not self._stop.is_set():
            with self._lock:
                clients = list(self._clients)
            try:
                readable, _, _ = select.select([self._sock, *clients], [], [], 0.2)
            except (OSError, ValueError):  # a client closed meanwhile
                readable = []
            for s in readable:
                if s is self._sock:
                    try:
                        conn, addr = self._sock.accept()
                    except OSError:
                        continue
                    conn.settimeout(1.0)
                    with self._lock:
                        self._clients.append(conn)
                    log.info("OpenIGTLink client %s:%d connected", *addr[:2])
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(s)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            if conn in self._clients:
                self._clients.remove(conn)
                log.info("OpenIGTLink client left")
        try:
            conn.close()
        except OSError:
            pass

    def is_connected(self) -> bool:
        with self._lock:
            return bool(self._clients)

    def _send(self, message: Any) -> None:
        with self._lock:
            clients = list(self._clients)
        if not clients:
            return
        data = message.pack()
        for conn in clients:
            try:
                conn.sendall(data)
            except OSError:  # gone or stalled for a second: drop it, it may reconnect
                self._drop(conn)

    def write(self, record: FrameRecord) -> None:
        res = record.result or {}
        if record.outcome == "accepted" and res.get("pose") is not None:
            self._send(self._pyigtl.TransformMessage(igtl_matrix(np.array(res["pose"])), device_name=self.device_name))
        conf = (res.get("confidence") or {}).get("score")
        text = (f"seq={record.seq} outcome={record.outcome} status={res.get('status', '')} "
                f"confidence={'' if conf is None else f'{conf:.3f}'} latency_ms={record.latency_ms:.1f} "
                f"source={record.source_id}" + (f" reason={record.reason}" if record.reason else ""))
        self._send(self._pyigtl.StringMessage(text, device_name="SopiStatus"))

    def overlay(self, record: FrameRecord, over: Overlay) -> None:
        """IMAGE message ``<device name>Overlay``: the RGB overlay as one slice (1, H, W, 3), pixel
        size at the detector as spacing, image axes as x / y (a 2-D picture, not placed in the CT)."""
        m = np.diag([over.du_mm, over.dv_mm, 1.0, 1.0])
        self._send(self._pyigtl.ImageMessage(over.rgb[np.newaxis], ijk_to_world_matrix=m,
                                             device_name=f"{self.device_name}Overlay"))

    def health(self, text: str) -> None:
        self._send(self._pyigtl.StringMessage(text, device_name="SopiHealth"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            clients, self._clients = self._clients, []
        for conn in clients:
            try:
                conn.close()
            except OSError:
                pass
        self._sock.close()
