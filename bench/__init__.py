"""The benchmark harness of issue 4: `python -m bench` (or `make bench`) runs every figure side by side.

Each benchmark is one module exposing `run(ctx) -> list[Figure]`; `bench.__main__` runs them in order,
prints the table and ends with one line of JSON holding every key.
"""
