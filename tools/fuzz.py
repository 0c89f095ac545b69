"""Fuzz the public entry points against the error contract (docs/reliability.md).

    python -m tools.fuzz --campaign dicom|ct|bundle|registrar|all --cases N --seed S --json OUT \\
        [--workers K] [--timeout-s T] [--memory-mb M]

The contract: every public entry point (`read_fluoro`, `iter_fluoro`, `load_ct`, `load_bundle`,
`Bundle.session`, `Registrar`, `register`, `track`) raises only sopi's typed errors
(`calib.errors.SopiError` subclasses) for anything that comes from data, never returns non-finite
values marked valid, never returns a NaN pose; a wrong Python argument *type* may stay a TypeError
raised at the entry. Each case also must not hang and must not make the process allocate more than
``--memory-mb`` (default 1024 MiB) beyond what it started with.

Harness: sopi (numba, ONNX Runtime, pydicom) is imported once, each campaign's seed inputs are
built once, in this process; then each case runs in a child made with ``os.fork()`` (Linux), which
draws every random choice from ``numpy.random.default_rng([seed, campaign, case])`` (the cases are
the same whatever ``--workers``), writes its mutated inputs to a private temporary folder and calls
the entry points. The child reports over a pipe: its description (one line per mutation), the stage
it is in, and at the end the worst outcome of its calls:

* ``ok`` / ``typed`` (a SopiError, or a TypeError where the case passed a wrong type on purpose);
* ``untyped`` (any other exception; with its type, message and a short traceback), ``crash`` (the
  child died without reporting: a signal in native code), counted as untyped;
* ``invalid`` (a returned frame / volume / pose breaks the contract: non-finite values marked
  valid, a NaN or non-rigid pose) and ``tampered_loaded`` (a graph whose bytes differ from the
  hash its manifest lists got into a session, or a manifest whose digest / signature does not
  match was accepted);
* ``memory``: the parent polls the child's resident set (/proc/PID/status) every 20 ms and kills it
  when it grows more than ``--memory-mb`` over its size at the fork; a child that ends with a peak
  (VmHWM, reset at the start of the case) over the limit, or that got a MemoryError (also one a
  typed error wraps), counts too. ``RLIMIT_AS`` is set to the child's address space at the fork +
  ``--memory-mb`` + ``--as-slack-mb`` (default 1024: numba / ONNX Runtime threads reserve address
  space they never touch) so that a huge allocation that is never touched is caught as well;
* ``hang``: killed after ``--timeout-s`` (default per campaign: dicom 30, ct 30, bundle 60,
  registrar 90 s).

Numba: the child of a process that already ran a parallel numba kernel on the GNU OpenMP threading
layer aborts; this tool sets ``NUMBA_THREADING_LAYER=workqueue`` (unless set) before numba is
imported, so the parent can warm up the kernels and every child reuses them. With ``--workers`` > 1,
``NUMBA_NUM_THREADS`` and the ONNX Runtime threads are divided among the workers.

Reproduce one case: ``--only 17 --in-process`` runs case 17 in this process (full traceback) and
``--keep DIR`` keeps the inputs of every failing case (DIR/<campaign>-<case>/).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1])
CAMPAIGNS = ("dicom", "ct", "bundle", "registrar")
CAMPAIGN_IDS = {name: i + 1 for i, name in enumerate(CAMPAIGNS)}
DEFAULT_TIMEOUT_S = {"dicom": 30.0, "ct": 30.0, "bundle": 60.0, "registrar": 90.0}
SUMMARY_KEYS = ("cases", "ok", "typed", "untyped", "hangs", "memory", "invalid", "tampered_loaded", "crashes",
                "harness_errors")
MAX_DETAILS = 50
INPUT_LIMIT_BYTES = 10 * 1024 * 1024  # the memory criterion is about inputs under 10 MB
POLL_S = 0.02


def _configure_env(workers: int) -> None:
    """Before numba / onnxruntime are imported: a fork-safe numba threading layer, threads per worker."""
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    cores = os.cpu_count() or 1
    per = max(1, cores // max(1, workers))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(per))
    os.environ.setdefault("OMP_NUM_THREADS", str(per))
    os.environ["SOPI_FUZZ_THREADS"] = str(per)
    os.environ.pop("SOPI_BUNDLE_PUBLIC_KEY", None)  # the bundle campaign chooses its keys per case


def _campaign_module(name: str):
    import importlib

    return importlib.import_module(f"tools.fuzz_{name}")


# ----------------------------------------------------------------------------------- /proc
def _proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, VmSize in KiB of a process (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:", b"VmSize:")):
                    k, v = line.split(b":", 1)
                    out[k.decode()] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


# ----------------------------------------------------------------------------------- child
@dataclass
class Options:
    seed: int
    timeout_s: float
    memory_mb: float
    as_slack_mb: float
    workers: int
    keep: Path | None
    verbose: bool


def _child_main(name: str, module: Any, state: Any, index: int, case_dir: Path, wfd: int, opts: Options) -> None:
    """Body of one forked case; never returns (os._exit)."""
    code = 0
    try:
        try:
            err = os.open(case_dir / ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(err, 2)
            os.close(err)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
        except OSError:
            pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import faulthandler

        faulthandler.enable()  # on fd 2, now the case's .stderr: a crash leaves its Python stack there

        def send(msg: dict) -> None:
            data = (json.dumps(msg, default=str) + "\n").encode()
            while data:
                n = os.write(wfd, data)
                data = data[n:]

        _run_one(name, module, state, index, case_dir, send, opts, limit_memory=True)
    except BaseException:  # noqa: BLE001 - report and leave
        code = 3
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _run_one(name: str, module: Any, state: Any, index: int, case_dir: Path, send, opts: Options,
             limit_memory: bool) -> dict:
    import numpy as np

    from tools.fuzz_common import Ctx, HarnessError, classify

    if limit_memory:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the peak of this case, not of the parent
        except OSError:
            pass
    st = _proc_status()
    rss0, vms0 = st.get("VmRSS", 0), st.get("VmSize", 0)
    send({"type": "start", "rss0": rss0, "vms0": vms0})
    if limit_memory and vms0:
        cap = (vms0 + int((opts.memory_mb + opts.as_slack_mb) * 1024)) * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ValueError, OSError):
            pass
    rng = np.random.default_rng([opts.seed, CAMPAIGN_IDS.get(name, 0), index])
    ctx = Ctx(send, ROOT)
    ctx.set_stage("generate")
    harness = None
    try:
        module.run_case(state, rng, case_dir, ctx)
    except HarnessError as exc:
        harness = {"outcome": "harness_error", "exc_type": "HarnessError", "message": str(exc)[:600],
                   "stage": ctx.stage}
    except BaseException as exc:  # noqa: BLE001
        outcome = classify(exc, False)
        if outcome != "memory":  # an exception outside ctx.call: the generator's own bug
            outcome = "harness_error"
        from tools.fuzz_common import short_tb

        harness = {"outcome": outcome, "exc_type": type(exc).__name__, "message": str(exc)[:600],
                   "traceback": short_tb(exc, ROOT), "stage": ctx.stage}
    worst = dict(ctx.worst())
    if harness is not None and (worst["outcome"] in ("ok", "typed")):
        worst = harness
    st = _proc_status()
    msg = {"type": "result", **worst, "rss0": rss0, "hwm": st.get("VmHWM", 0),
           "input_bytes": _dir_bytes(case_dir), "calls": [c["stage"] + ":" + c["outcome"] for c in ctx.calls]}
    send(msg)
    return msg


def _dir_bytes(d: Path) -> int:
    """Apparent size of the regular files of a case (symlinks and FIFOs not followed)."""
    total = 0
    for root, _, files in os.walk(d):
        for fn in files:
            if fn == ".stderr":
                continue
            try:
                st = os.lstat(os.path.join(root, fn))
            except OSError:
                continue
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return total


# ----------------------------------------------------------------------------------- parent
@dataclass
class Running:
    pid: int
    fd: int
    index: int
    case_dir: Path
    t0: float
    buf: bytes = b""
    eof: bool = False
    desc: list[str] = field(default_factory=list)
    stage: str = "start"
    rss0: int = 0
    peak: int = 0
    result: dict | None = None
    killed: str | None = None
    started: bool = False  # the child reset its VmHWM and reported its starting size


def _parse(r: Running, data: bytes) -> None:
    r.buf += data
    while b"\n" in r.buf:
        line, r.buf = r.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        t = msg.get("type")
        if t == "desc":
            if len(r.desc) < 200:
                r.desc.append(msg["line"])
        elif t == "stage":
            r.stage = msg["stage"]
        elif t == "start":
            r.rss0 = int(msg.get("rss0", 0)) or r.rss0
            r.started = True
        elif t == "result":
            r.result = msg


def _drain(r: Running) -> None:
    while not r.eof:
        try:
            data = os.read(r.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            r.eof = True
            return
        _parse(r, data)


def _stderr_tail(case_dir: Path, n: int = 1200) -> str:
    try:
        data = (case_dir / ".stderr").read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace")


def _finish(name: str, r: Running, status: int | None, opts: Options) -> dict:
    limit_kb = opts.memory_mb * 1024
    base = {"campaign": name, "case": r.index, "desc": r.desc, "stage": r.stage,
            "wall_s": round(time.monotonic() - r.t0, 3)}
    if r.killed == "hang" and r.stage == "generate":  # the generator itself is stuck: not a finding
        res = {"outcome": "harness_error", "exc_type": "Timeout", "message": "the case generator did not finish"}
    elif r.killed:
        res = {"outcome": r.killed, "exc_type": {"hang": "Timeout", "memory": "OverMemoryLimit"}[r.killed],
               "message": (f"killed after {opts.timeout_s:g} s in stage {r.stage!r}" if r.killed == "hang" else
                           f"resident set grew by {(r.peak - r.rss0) / 1024:.0f} MiB (limit {opts.memory_mb:g})"
                           f" in stage {r.stage!r}")}
    elif r.result is not None:
        res = {k: v for k, v in r.result.items() if k != "type"}
        r.peak = max(r.peak, int(res.get("hwm", 0)))
    else:
        sig = None if status is None or not os.WIFSIGNALED(status) else os.WTERMSIG(status)
        code = None if status is None or not os.WIFEXITED(status) else os.WEXITSTATUS(status)
        what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
        res = {"outcome": "crash", "exc_type": f"crash ({what})",
               "message": f"the case process died without a result ({what}) in stage {r.stage!r}",
               "stderr": _stderr_tail(r.case_dir)}
    res["input_bytes"] = _dir_bytes(r.case_dir)
    growth_kb = max(0, r.peak - r.rss0) if r.rss0 else 0
    res.setdefault("rss0", r.rss0)
    res["peak_rss_mb"] = round(r.peak / 1024, 1)
    res["rss_growth_mb"] = round(growth_kb / 1024, 1)
    if res["outcome"] not in ("memory", "crash", "hang") and growth_kb > limit_kb:
        res["also"] = {k: res.get(k) for k in ("outcome", "exc_type", "message")}
        res.update(outcome="memory", exc_type="OverMemoryLimit",
                   message=f"peak resident set grew by {growth_kb / 1024:.0f} MiB (limit {opts.memory_mb:g})")
    return {**base, **res}


def run_campaign(name: str, cases: int | list[int], opts: Options, workdir: Path,
                 progress: bool = True, all_results: bool = False, module: Any = None) -> dict:
    """Run the cases of one campaign (``cases``: a count or explicit indices); return its summary.
    ``module``: the campaign (``setup(workdir, seed)``, ``run_case(state, rng, case_dir, ctx)``); default
    ``tools.fuzz_<name>``."""
    module = module or _campaign_module(name)
    t_setup = time.monotonic()
    state = module.setup(workdir / f"{name}-setup", opts.seed)
    setup_s = time.monotonic() - t_setup
    indices = list(range(cases)) if isinstance(cases, int) else list(cases)
    results: list[dict] = []
    pending = list(reversed(indices))
    running: dict[int, Running] = {}
    t0 = time.monotonic()
    last_print = t0
    limit_kb = opts.memory_mb * 1024
    try:
        while pending or running:
            while pending and len(running) < opts.workers:
                idx = pending.pop()
                case_dir = workdir / f"{name}-{idx}"
                if case_dir.exists():
                    shutil.rmtree(case_dir, ignore_errors=True)
                case_dir.mkdir(parents=True)
                rfd, wfd = os.pipe()
                pid = os.fork()
                if pid == 0:  # child
                    os.close(rfd)
                    _child_main(name, module, state, idx, case_dir, wfd, opts)
                os.close(wfd)
                os.set_blocking(rfd, False)
                st = _proc_status(pid)
                running[pid] = Running(pid, rfd, idx, case_dir, time.monotonic(), rss0=st.get("VmRSS", 0))
            fds = [r.fd for r in running.values() if not r.eof]
            if fds:
                ready, _, _ = select.select(fds, [], [], POLL_S)
                for r in list(running.values()):
                    if r.fd in ready:
                        _drain(r)
            else:
                time.sleep(POLL_S)
            now = time.monotonic()
            for pid, r in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    st = _proc_status(pid)
                    rss = st.get("VmRSS", 0)
                    # VmHWM only once the child has reset it (before, it is the parent's, copied by fork)
                    r.peak = max(r.peak, rss, st.get("VmHWM", 0) if r.started and r.result is None else 0)
                    if r.rss0 and rss - r.rss0 > limit_kb:
                        r.killed = "memory"
                    elif now - r.t0 > opts.timeout_s:
                        r.killed = "hang"
                    if r.killed is None:
                        continue
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    _, status = os.waitpid(pid, 0)
                _drain(r)
                os.close(r.fd)
                del running[pid]
                res = _finish(name, r, status, opts)
                results.append(res)
                _keep_or_remove(r.case_dir, res, opts)
            if progress and time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                s = summarise(results)
                print(f"  {name}: {len(results)}/{len(indices)} cases, {s['untyped']} untyped, {s['hangs']} hangs, "
                      f"{s['memory']} memory, {s['invalid'] + s['tampered_loaded']} bad outputs "
                      f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        for pid in running:  # interrupted: our own children only
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
    wall = time.monotonic() - t0
    summary = summarise(results)
    results.sort(key=lambda x: x["case"])
    failures = [x for x in results if x["outcome"] not in ("ok", "typed")]
    summary.update({
        "seed": opts.seed, "wall_s": round(wall, 1), "setup_s": round(setup_s, 1),
        "cases_per_s": round(len(results) / wall, 2) if wall > 0 else None,
        "max_rss_growth_mb": max((x.get("rss_growth_mb", 0) for x in results), default=0),
        "max_input_bytes": max((x.get("input_bytes", 0) for x in results), default=0),
        "memory_over_limit_small_inputs": sum(1 for x in results if x["outcome"] == "memory"
                                              and x.get("input_bytes", 0) < INPUT_LIMIT_BYTES),
        "classes": failure_classes(failures),
        "failures": failures[:MAX_DETAILS],
    })
    if all_results:
        summary["results"] = results
    return summary


def _keep_or_remove(case_dir: Path, res: dict, opts: Options) -> None:
    if opts.keep is not None and res["outcome"] not in ("ok", "typed"):
        dst = opts.keep / case_dir.name
        shutil.rmtree(dst, ignore_errors=True)
        try:
            shutil.move(str(case_dir), str(dst))
            (dst / "case.json").write_text(json.dumps(res, indent=1, default=str))
            return
        except OSError:
            pass
    shutil.rmtree(case_dir, ignore_errors=True)


def summarise(results: list[dict]) -> dict:
    s = dict.fromkeys(SUMMARY_KEYS, 0)
    s["cases"] = len(results)
    for x in results:
        o = x["outcome"]
        key = {"hang": "hangs", "harness_error": "harness_errors"}.get(o, o)
        if o == "crash":
            s["crashes"] += 1
            key = "untyped"
        s[key] = s.get(key, 0) + 1
    return s


def _where(x: dict) -> str:
    """The innermost repository frame of a failure's traceback (else the innermost frame)."""
    tb = x.get("traceback") or []
    for fr in reversed(tb):
        if fr.split(":", 1)[0].startswith(("calib/", "runtime/", "models/", "export/")):
            return fr
    return tb[-1] if tb else x.get("stage", "")


def failure_classes(failures: list[dict]) -> list[dict]:
    """Failures grouped by (outcome, exception type, stage, innermost sopi frame), largest first."""
    groups: dict[tuple, dict] = {}
    for x in failures:
        stage = str(x.get("stage", "")).split("#")[0]
        key = (x["outcome"], x.get("exc_type", ""), stage, _where(x) if x["outcome"] not in ("hang", "memory")
               else "")
        g = groups.get(key)
        if g is None:
            groups[key] = {"outcome": key[0], "exc_type": key[1], "stage": key[2], "where": key[3], "count": 1,
                           "example_case": x["case"], "message": x.get("message", ""), "desc": x.get("desc", [])[:12]}
        else:
            g["count"] += 1
    return sorted(groups.values(), key=lambda g: -g["count"])


# ----------------------------------------------------------------------------------- output
def format_table(summaries: dict[str, dict]) -> str:
    cols = ("cases", "ok", "typed", "untyped", "hangs", "memory", "invalid", "tampered_loaded")
    heads = ("campaign",) + cols + ("wall_s",)
    rows = [heads] + [(name,) + tuple(str(s.get(c, 0)) for c in cols) + (str(s.get("wall_s", "")),)
                      for name, s in summaries.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, " \
           f"{platform.system()} {platform.release()}"


def _parse_cases(text: str, campaigns: list[str]) -> dict[str, int]:
    """``N`` (each campaign) or ``dicom=10000,ct=2000,...``."""
    if "=" not in text:
        return dict.fromkeys(campaigns, int(text))
    out = {}
    for part in text.split(","):
        k, v = part.split("=", 1)
        if k.strip() not in CAMPAIGNS:
            raise SystemExit(f"--cases: unknown campaign {k!r}")
        out[k.strip()] = int(v)
    return {c: out.get(c, 0) for c in campaigns}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign", default="all", choices=CAMPAIGNS + ("all",))
    ap.add_argument("--cases", default="100", help="cases per campaign: N, or dicom=N,ct=N,... (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the summary (and failure details) here")
    ap.add_argument("--workers", type=int, default=1, help="cases run in parallel (2 cores: 1 or 2)")
    ap.add_argument("--timeout-s", type=float, default=None, help="per case (default per campaign)")
    ap.add_argument("--memory-mb", type=float, default=1024.0, help="growth of a case's resident set (MiB)")
    ap.add_argument("--as-slack-mb", type=float, default=1024.0,
                    help="RLIMIT_AS = address space at fork + memory-mb + this (0: no RLIMIT_AS)")
    ap.add_argument("--only", default=None, help="run only these case indices (comma separated)")
    ap.add_argument("--in-process", action="store_true",
                    help="with --only: run the cases in this process, print full tracebacks")
    ap.add_argument("--keep", type=Path, default=None, help="keep the inputs of failing cases here")
    ap.add_argument("--workdir", type=Path, default=None, help="temporary folder (default: a new one in $TMPDIR)")
    ap.add_argument("--all-results", action="store_true",
                    help="also write every case's outcome (with typed errors' messages) to the JSON")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if sys.platform != "linux":
        ap.error("tools.fuzz needs Linux (fork, /proc)")
    _configure_env(args.workers)
    campaigns = list(CAMPAIGNS) if args.campaign == "all" else [args.campaign]
    counts = _parse_cases(args.cases, campaigns)
    only = [int(x) for x in args.only.split(",")] if args.only else None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sopi-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    started = _dt.datetime.now().astimezone()
    try:
        for name in campaigns:
            timeout = args.timeout_s if args.timeout_s is not None else DEFAULT_TIMEOUT_S[name]
            opts = Options(args.seed, timeout, args.memory_mb, args.as_slack_mb if args.as_slack_mb > 0 else 1e12,
                           args.workers, args.keep, not args.quiet)
            if args.in_process:
                if only is None:
                    ap.error("--in-process needs --only")
                _run_in_process(name, only, opts, workdir)
                continue
            n = only if only is not None else counts[name]
            if isinstance(n, int) and n <= 0:
                continue
            if not args.quiet:
                print(f"{name}: {n if isinstance(n, int) else len(n)} cases, seed {args.seed}, "
                      f"{args.workers} worker(s), timeout {timeout:g} s, memory {args.memory_mb:g} MiB",
                      file=sys.stderr, flush=True)
            s = run_campaign(name, n, opts, workdir, progress=not args.quiet, all_results=args.all_results)
            s.update({"date": started.isoformat(timespec="seconds"), "machine": machine(),
                      "workers": args.workers, "timeout_s": timeout, "memory_mb": args.memory_mb})
            summaries[name] = s
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.in_process:
        return 0
    print(format_table(summaries))
    for name, s in summaries.items():
        for g in s["classes"]:
            print(f"  {name} [{g['outcome']}] x{g['count']}: {g['exc_type']} at {g['stage']} {g['where']} "
                  f"(case {g['example_case']}): {g['message'][:200]}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summaries, indent=1, default=str))
    bad = sum(s["untyped"] + s["hangs"] + s["memory"] + s["invalid"] + s["tampered_loaded"]
              for s in summaries.values())
    return 1 if bad else 0


def _run_in_process(name: str, indices: list[int], opts: Options, workdir: Path) -> None:
    """Debugging: the cases in this process (no fork, no limits), printing every call's outcome."""
    module = _campaign_module(name)
    state = module.setup(workdir / f"{name}-setup", opts.seed)
    for idx in indices:
        case_dir = (opts.keep or workdir) / f"{name}-{idx}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        lines: list[dict] = []
        res = _run_one(name, module, state, idx, case_dir, lines.append, opts, limit_memory=False)
        print(f"--- {name} case {idx}: {res['outcome']}")
        for m in lines:
            if m["type"] == "desc":
                print("   ", m["line"])
        print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
