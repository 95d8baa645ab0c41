"""The benchmarks behind ``qafl bench`` (bench/README.md): :mod:`qafl_bench.suite` (the lines and their
targets) and :mod:`qafl_bench.workloads` (data, the bare torch loop, interleaved timing)."""
