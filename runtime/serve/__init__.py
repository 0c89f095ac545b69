"""sopi-serve's library: frames in (a watched folder), poses out (JSON lines), and the service loop
that registers each frame in tracking mode and answers every frame with exactly one record.

    from runtime.serve import FolderSource, JsonlSink, Service
    service = Service(registrar, [JsonlSink("poses.jsonl")], init="dicom")
    service.run(FolderSource("incoming/"), stop_event)

The command line (`runtime.cli.serve`) is a thin layer over these.
"""

from runtime.serve.folder import FolderSource
from runtime.serve.records import OUTCOMES, FrameRecord
from runtime.serve.service import Service
from runtime.serve.sinks import JsonlSink

__all__ = ["FolderSource", "FrameRecord", "JsonlSink", "OUTCOMES", "Service"]
