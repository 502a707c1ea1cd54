"""The command lines, run as modules from the repository root: ``python -m scripts.<name>`` (data preparation,
parameter counting, table rendering, the tiny assets, the benchmarks, the GPU check, the parity evidence,
the environment check)."""
