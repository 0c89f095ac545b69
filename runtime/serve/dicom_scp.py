"""`DicomReceiver`: a DICOM C-STORE SCP (pynetdicom) that hands X-ray objects from the C-arm or a
PACS node to the service.

Every storage SOP class is accepted at association negotiation, so that each dataset sent gets a
C-STORE answer and a record: projection objects (XA, XRF, enhanced XA / XRF, DX, CR, ...) whose
header passes `calib.dicom.check_fluoro` are queued and answered 0x0000 (Success: received;
registration follows); other SOP classes are answered 0x0122 (Refused: SOP Class not supported) and
datasets that cannot be decoded or fail the header checks 0xC210 (Error: Cannot understand), each
with a "rejected" record. Verification (C-ECHO) is supported. ``allowed_aes``: calling AE titles
accepted (None: any); ``ae_title``: the called AE title the SCU must use.
"""

from __future__ import annotations

import logging
from typing import Any

from runtime.serve.inbox import Item

__all__ = ["DicomReceiver", "STATUS_SUCCESS", "STATUS_SOP_CLASS_NOT_SUPPORTED", "STATUS_CANNOT_UNDERSTAND"]

log = logging.getLogger("sopi.serve")

STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_CANNOT_UNDERSTAND = 0xC210


class DicomReceiver:
    """Listens on ``host``:``port`` until `close`; received objects go to ``service.submit``."""

    def __init__(self, service: Any, port: int, *, ae_title: str = "SOPI", host: str = "0.0.0.0",
                 allowed_aes: list[str] | None = None) -> None:
        try:
            from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
            from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
        except ImportError:
            raise RuntimeError("the DICOM receiver needs pynetdicom: pip install 'sopi[serve]'") from None
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"AE title must be 1-16 characters, got {ae_title!r}")
        self.service = service
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        if allowed_aes:
            ae.require_calling_aet = list(allowed_aes)
        self.ae = ae
        try:
            server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise OSError(f"DICOM port {port}: cannot listen ({exc})") from None
        assert server is not None  # block=False returns the server
        self.server = server
        self.port = port

    def _on_store(self, event: Any) -> int:
        from calib.dicom import check_fluoro
        from calib.errors import DicomSOPClassError, SopiError

        calling = str(event.assoc.requestor.ae_title).strip()
        source = f"dicom:{calling}"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.get("SOPInstanceUID", "")) or "<no SOP Instance UID>"
        except Exception as exc:  # noqa: BLE001 - undecodable: answer, record, carry on
            self.service.submit_rejected(Item(None, source, "<undecodable>"),
                                         f"cannot decode the dataset ({type(exc).__name__}: {exc})")
            return STATUS_CANNOT_UNDERSTAND
        try:
            check_fluoro(ds)
        except DicomSOPClassError as exc:
            self.service.submit_rejected(Item(None, source, uid), f"{type(exc).__name__}: {exc}")
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        except SopiError as exc:
            self.service.submit_rejected(Item(None, source, uid), f"{type(exc).__name__}: {exc}")
            return STATUS_CANNOT_UNDERSTAND
        except Exception as exc:  # noqa: BLE001
            log.exception("internal error checking %s", uid)
            self.service.submit_rejected(Item(None, source, uid), f"internal error, please report: {exc}")
            return STATUS_CANNOT_UNDERSTAND
        self.service.submit(Item(ds, source, uid))
        return STATUS_SUCCESS

    def close(self) -> None:
        """Stop listening (associations in progress are aborted)."""
        self.server.shutdown()
