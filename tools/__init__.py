"""Benchmark and maintenance tools of the sopi checkout (not installed with the package).

Run each as a module from the repository root with the project venv (sopi installed, editable);
``--help`` on any of them shows its options:

    python -m tools.bench_registration --ct phantom --cases 100    # registration: success, errors, time
    python -m tools.bench_working_resolution --cases 20            # native vs resampled CT
    python -m tools.bench_projector sizes                          # projector render / Jacobian timings
    python -m tools.bench_projector diffdrr                        # ... side by side with DiffDRR 0.6.1
    python -m tools.bench_networks --threads 2                     # ORT CPU latency of the networks
    python -m tools.latency --help                                 # latency profile (= sopi-latency)
    python -m tools.import_graph                                   # import circles, largest modules
    python -m tools.diffdrr_env [DIR]                              # creates the DiffDRR 0.6.1 venv
    python -m tools.ct_data                                        # fetches DiffDRR's CT, prints its folder

Library modules: `tools.conditions` (benchmark CTs and frame conditions), `tools.ct_data`
(DiffDRR's CT, data only), `tools.stats` (the benchmark's statistics, used by the tests),
`tools.diffdrr_env` (the DiffDRR venv: create, find). ``tools/diffdrr_worker.py`` is not run
from here: the benchmarks start it by path with the DiffDRR venv's python.

The tests import `tools.stats` with the repository root on sys.path (pytest ``pythonpath = ["."]``).
"""
