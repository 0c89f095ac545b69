"""sopi-serve's library: frames in (a watched folder, a DICOM C-STORE receiver), poses out (JSON
lines, OpenIGTLink), and the service loop that registers each frame in tracking mode and answers
every frame with exactly one record.

    from runtime.serve import FolderSource, JsonlSink, Service
    service = Service(registrar, [JsonlSink("poses.jsonl")], init="dicom")
    service.run(stop_event, folder=FolderSource("incoming/"))

The command line (`runtime.cli.serve`) is a thin layer over these.
"""

from runtime.serve.folder import FolderSource
from runtime.serve.inbox import Inbox, Item
from runtime.serve.records import OUTCOMES, FrameRecord
from runtime.serve.service import Service
from runtime.serve.sinks import JsonlSink

__all__ = ["FolderSource", "FrameRecord", "Inbox", "Item", "JsonlSink", "OUTCOMES", "Service"]
