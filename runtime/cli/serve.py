"""sopi-serve: register every fluoroscopy frame that arrives -- sent by DICOM C-STORE or written into a
watched folder -- in tracking mode, and answer each with one JSON line (pose, status, confidence,
latency; failed, rejected and dropped frames included, with why) and, with --igtl-port, an
OpenIGTLink TRANSFORM (accepted poses) and STRING (every frame, and health every second). Loads the
CT once, warms up, runs until SIGINT / SIGTERM (the frame in hand is finished, queued frames are
recorded as dropped, sockets and the output closed). Options come from --config (TOML, the same
names with underscores) and the flags, which win. Exit codes: see the end of --help.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from runtime.cli.args import positive_float

__all__ = ["main"]

EXIT_OK, EXIT_INPUT, EXIT_INTERNAL = 0, 2, 1

EPILOG = """\
exit codes:
  0  stopped by SIGINT / SIGTERM after a clean shutdown
  1  an unexpected internal error ("internal error, please report")
  2  usage or start-up error: bad arguments or config, an unreadable CT, mask, calibration or pose
     file, a folder that cannot be watched or an output that cannot be written

example (sample inputs from `sopi-demo --write-samples DIR`):
  sopi-serve --ct DIR/ct --mask DIR/mask.npz --calib DIR/calibration.json --watch incoming/ --jsonl poses.jsonl
  sopi-serve --ct DIR/ct --mask DIR/mask.npz --dicom-port 11112 --ae-title SOPI --igtl-port 18944
"""

OPTIONS = ("ct", "mask", "watch", "video", "video_crop", "video_bone", "dicom_port", "ae_title", "allowed_aes",
           "igtl_port", "igtl_host", "igtl_overlay", "device_name", "jsonl", "calib", "init", "budget_ms", "backend",
           "reinit_after", "poll_s", "settle_s", "inbox_size", "bundle", "log_level")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sopi-serve", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="TOML file with any of the options below (flags win)")
    ap.add_argument("--ct", help="CT: DICOM series folder, NIfTI or .npz")
    ap.add_argument("--mask", help="vertebra label mask (NIfTI, .npz or DICOM) on the CT grid")
    ap.add_argument("--watch", help="folder to watch for new DICOM frames (XA, XRF, DX, CR, enhanced, multi-frame)")
    ap.add_argument("--video", help="live video in: a capture device index (0, 1, ...), a stream URL or a video "
                                    "file (needs --calib made on frames of the same video output)")
    ap.add_argument("--video-crop", help="x,y,width,height of the image area in the video frame (default: all)")
    ap.add_argument("--video-bone", choices=("dark", "bright"), help="how bone looks on the video (default dark)")
    ap.add_argument("--dicom-port", type=int, help="listen for DICOM C-STORE on this port (all interfaces)")
    ap.add_argument("--ae-title", help="called AE title of the DICOM receiver (default SOPI)")
    ap.add_argument("--allowed-aes", help="comma-separated calling AE titles accepted (default: any)")
    ap.add_argument("--igtl-port", type=int, help="OpenIGTLink server port (Slicer's default: 18944)")
    ap.add_argument("--igtl-host", help="OpenIGTLink listen address (default 127.0.0.1; 0.0.0.0: every interface)")
    ap.add_argument("--igtl-overlay", action="store_true", default=None,
                    help="also send each accepted frame's overlay (DRR edges over the frame) as an OpenIGTLink "
                         "IMAGE '<device name>Overlay'")
    ap.add_argument("--device-name", help="OpenIGTLink TRANSFORM device name (default CTToCArm)")
    ap.add_argument("--jsonl", help="JSON-lines output file, appended ('-': stdout; default: stdout)")
    ap.add_argument("--calib", help="calibration JSON or profile name (default: the frames' DICOM tags)")
    ap.add_argument("--init", help="start without a tracked pose: dicom (positioner angles, default), "
                                   "network (needs --bundle) or a pose JSON file")
    ap.add_argument("--budget-ms", type=positive_float, help="deadline per frame in ms ('none': no deadline)")
    ap.add_argument("--backend", choices=("auto", "cpu", "cuda"), help="projector backend (default auto)")
    ap.add_argument("--reinit-after", type=int, help="frames in a row not accepted before tracking restarts "
                                                     "from --init (default 3)")
    ap.add_argument("--poll-s", type=float, help="folder poll interval in s (default 0.1)")
    ap.add_argument("--settle-s", type=float, help="a file is read once unchanged for this long (default 0.2)")
    ap.add_argument("--inbox-size", type=int, help="frames waiting at most; beyond, the oldest is dropped "
                                                   "and recorded (default 4; 1 with --video: newest frame wins)")
    ap.add_argument("--bundle", help="bundle folder (network init, learned stage)")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    return ap


DEFAULTS: dict[str, Any] = {"video_bone": "dark", "jsonl": "-", "init": "dicom", "budget_ms": None, "backend": "auto",
                            "reinit_after": 3, "poll_s": 0.1, "settle_s": 0.2, "inbox_size": None, "ae_title": "SOPI",
                            "device_name": "CTToCArm", "igtl_host": "127.0.0.1", "igtl_overlay": False,
                            "log_level": "info"}


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < TOML config < flags. ValueError naming the key for unknown keys or bad values."""
    import tomllib

    cfg = dict(DEFAULTS)
    if args.config is not None:
        try:
            data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{args.config}: cannot read the TOML config ({exc})") from None
        unknown = sorted(set(data) - set(OPTIONS))
        if unknown:
            raise ValueError(f"{args.config}: unknown keys {unknown} (known: {', '.join(OPTIONS)})")
        cfg.update(data)
    cfg.update({k: v for k, v in vars(args).items() if k in OPTIONS and v is not None})
    if not cfg.get("ct"):
        raise ValueError("--ct is required (flag or config key 'ct')")
    if not cfg.get("watch") and cfg.get("dicom_port") is None and cfg.get("video") is None:
        raise ValueError("no frame source: give --watch DIR, --dicom-port N and / or --video SRC")
    if cfg.get("video") is not None and not cfg.get("calib"):
        raise ValueError("--video needs --calib (intrinsics in video pixels: sopi-calib phantom on grabbed frames)")
    if cfg.get("video") is not None and cfg["init"] == "dicom":
        raise ValueError("video frames carry no positioner angles: with --video give --init network (and "
                         "--bundle) or --init pose.json")
    if isinstance(cfg.get("video_crop"), str):
        try:
            cfg["video_crop"] = tuple(int(x) for x in cfg["video_crop"].split(","))
        except ValueError:
            raise ValueError(f"video_crop must be x,y,width,height integers, got {cfg['video_crop']!r}") from None
    if cfg.get("video_crop") is not None and (len(cfg["video_crop"]) != 4 or min(cfg["video_crop"][2:]) < 32
                                              or min(cfg["video_crop"][:2]) < 0):
        raise ValueError(f"video_crop must be x,y >= 0 and width,height >= 32, got {cfg['video_crop']!r}")
    if cfg["budget_ms"] is not None:
        from runtime.registration.timing import check_budget_ms
        cfg["budget_ms"] = check_budget_ms(cfg["budget_ms"])
    for key, lo, hi in (("reinit_after", 1, 1e6), ("poll_s", 0.001, 3600), ("settle_s", 0.0, 3600),
                        ("inbox_size", 1, 1e4), ("dicom_port", 1, 65536), ("igtl_port", 1, 65536)):
        v = cfg.get(key)
        if v is None and key in ("dicom_port", "igtl_port", "inbox_size"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v < hi:
            raise ValueError(f"{key} must be a number in [{lo:g}, {hi:g}), got {v!r}")
    if not isinstance(cfg["igtl_overlay"], bool):
        raise ValueError(f"igtl_overlay must be true or false, got {cfg['igtl_overlay']!r}")
    if cfg["igtl_overlay"] and cfg.get("igtl_port") is None:
        raise ValueError("--igtl-overlay needs --igtl-port (the overlay goes out over OpenIGTLink)")
    if isinstance(cfg.get("allowed_aes"), str):
        cfg["allowed_aes"] = [a.strip() for a in cfg["allowed_aes"].split(",") if a.strip()]
    return cfg


def _build(cfg: dict[str, Any]):
    """(registrar, service, folder source or None, closers) from the configuration; raises on bad input."""
    from calib.calibration import load_calibration
    from calib.geometry import Intrinsics
    from runtime.cli.register import load_pose_json
    from runtime.core.ct_io import load_ct
    from runtime.registration.registrar import Registrar
    from runtime.serve import FolderSource, JsonlSink, Service

    calib = load_calibration(cfg["calib"]) if cfg.get("calib") else None
    init = cfg["init"] if cfg["init"] in ("dicom", "network") else load_pose_json(cfg["init"])
    folder = FolderSource(cfg["watch"], poll_s=cfg["poll_s"], settle_s=cfg["settle_s"]) if cfg.get("watch") else None
    vol = load_ct(cfg["ct"], mask=cfg.get("mask"))
    intr = calib.intrinsics if calib is not None else Intrinsics.perlove_plx118f()
    reg = Registrar(vol, intr, backend=cfg["backend"], budget_ms=cfg["budget_ms"], bundle=cfg.get("bundle"))
    sinks: list[Any] = [JsonlSink(cfg["jsonl"])]
    if cfg.get("igtl_port") is not None:
        from runtime.serve.igtl import IgtlSink
        sinks.append(IgtlSink(int(cfg["igtl_port"]), device_name=str(cfg["device_name"]), host=str(cfg["igtl_host"])))
    service = Service(reg, sinks, init=init, reinit_after=int(cfg["reinit_after"]), calibration=calib,
                      inbox_size=int(cfg["inbox_size"] or (1 if cfg.get("video") is not None else 4)),
                      overlay=cfg["igtl_overlay"])
    closers = list(sinks)
    if cfg.get("dicom_port") is not None:
        from runtime.serve.dicom_scp import DicomReceiver
        closers.insert(0, DicomReceiver(service, int(cfg["dicom_port"]), ae_title=str(cfg["ae_title"]),
                                        allowed_aes=cfg.get("allowed_aes")))
    if cfg.get("video") is not None:
        from runtime.serve.video import VideoSource
        src = cfg["video"]
        src = int(src) if isinstance(src, int) or str(src).isdigit() else str(src)
        closers.insert(0, VideoSource(service, src, calib, crop=cfg.get("video_crop"), bone=cfg["video_bone"]))
    return reg, service, folder, closers


def _sources(cfg: dict[str, Any]) -> str:
    out = [f"folder {cfg['watch']}"] if cfg.get("watch") else []
    if cfg.get("dicom_port") is not None:
        out.append(f"DICOM {cfg['ae_title']}@{cfg['dicom_port']}")
    if cfg.get("video") is not None:
        out.append(f"video {cfg['video']}")
    if cfg.get("igtl_port") is not None:
        out.append(f"OpenIGTLink out on {cfg['igtl_host']}:{cfg['igtl_port']}")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_INPUT if exc.code else EXIT_OK
    from calib.errors import SopiError

    log = logging.getLogger("sopi.serve")
    try:
        cfg = load_config(args)
        logging.basicConfig(level=cfg["log_level"].upper(), stream=sys.stderr,
                            format="%(asctime)s sopi-serve %(levelname)s %(message)s")
        log.info("loading CT %s", cfg["ct"])
        reg, service, folder, closers = _build(cfg)
        log.info("registrar ready on %s; warming up", reg.backend)
        log.info("warm-up %.0f ms; serving (%s)", reg.warm_up(), _sources(cfg))
    except (SopiError, OSError, ValueError) as exc:
        print(f"sopi-serve: error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INPUT
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.run(stop, folder=folder)
    except Exception as exc:  # noqa: BLE001
        print(f"sopi-serve: error: internal error, please report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for c in closers:  # the receiver first: nothing new arrives while the outputs close
            try:
                c.close()
            except Exception:  # noqa: BLE001
                log.exception("closing %r", c)
    log.info("stopped: %s", service.health())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
