"""The driver: the `ecg-fat` command line, the local federation, `submit`, the report and the benchmark.

It sits above the Flower apps (server/, client/) and the shared core (common/), and is not part of the
app bundle that `flwr run` sends to the SuperLink and the SuperNodes.
"""
