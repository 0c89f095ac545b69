"""One Registrar per thread: N Registrars registering in N threads at once give exactly the poses
of serial runs (the projector's buffers and caches are per instance; numba's threading layer is
called from several threads), and no thread is left behind."""

from __future__ import annotations

import threading

import numpy as np

from runtime import Registrar
from runtime.synthetic import pa_pose, perturb_pose, synthesize_frame


def _cases(vol, intr, n):
    out = []
    for i in range(n):
        T = pa_pose(vol.centre)
        fr = synthesize_frame(vol, intr, T, rng=np.random.default_rng(i))
        r = np.random.default_rng(100 + i)
        out.append((fr, perturb_pose(T, vol.centre, r.normal(0, 2, 3), r.normal(0, 4, 3))))
    return out


def test_registrars_in_threads_match_serial_runs(phantom64, detector64):
    cases = _cases(phantom64, detector64, 3)
    serial = [Registrar(phantom64, detector64, backend="cpu").register(fr, init=T0).pose for fr, T0 in cases]
    before = threading.active_count()
    poses: list = [None] * len(cases)
    errors: list = []

    def work(k: int) -> None:
        try:
            reg = Registrar(phantom64, detector64, backend="cpu")
            poses[k] = reg.register(cases[k][0], init=cases[k][1]).pose
        except Exception as exc:  # noqa: BLE001 -- reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and not any(t.is_alive() for t in threads)
    for a, b in zip(serial, poses):
        assert np.array_equal(a, b)
    assert threading.active_count() == before


def test_one_registrar_serialises_concurrent_calls(phantom64, detector64):
    """Two threads on ONE Registrar: the lock serialises them; both results equal a serial run."""
    (fr, T0), = _cases(phantom64, detector64, 1)
    reg = Registrar(phantom64, detector64, backend="cpu")
    ref = reg.register(fr, init=T0).pose
    poses: list = []
    threads = [threading.Thread(target=lambda: poses.append(reg.register(fr, init=T0).pose)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(poses) == 2 and all(np.array_equal(p, ref) for p in poses)


def test_blas_single_threaded_during_registration_only(phantom64, detector64, monkeypatch):
    from threadpoolctl import threadpool_info

    import runtime.registration.intensity as intensity

    def blas_threads() -> list[int]:  # numpy's BLAS (other packages may bring their own)
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    before = blas_threads()
    assert before  # numpy's BLAS is visible to threadpoolctl
    seen: list[list[int]] = []
    real = intensity.outlier_mask

    def spy(*a, **k):
        # (OpenBLAS reports its count per calling thread: read it on the main thread only)
        if threading.current_thread() is threading.main_thread():
            seen.append(blas_threads())
        return real(*a, **k)

    monkeypatch.setattr(intensity, "outlier_mask", spy)
    cases = _cases(phantom64, detector64, 2)
    reg = Registrar(phantom64, detector64, backend="cpu")
    reg.register(cases[0][0], init=cases[0][1])
    # two registrations at once in two threads: the count, not the last to leave, restores
    threads = [threading.Thread(target=Registrar(phantom64, detector64, backend="cpu").register,
                                args=(fr,), kwargs={"init": T0}) for fr, T0 in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg.track([fr for fr, _ in cases], init=cases[0][1])
    assert len(seen) >= 3 and all(s == [1] * len(before) for s in seen)
    assert blas_threads() == before
