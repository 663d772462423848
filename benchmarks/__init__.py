"""reportgen's benchmarks against honest baselines: `python -m benchmarks [--quick]`.

One module per benchmark (`compute`, `attattr`, `browser`, `build`), each a `run(options)` that
returns result tables; `__main__` runs them and writes `RESULTS.md`.
"""
