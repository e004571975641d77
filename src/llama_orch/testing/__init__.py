"""Test and benchmark scaffolding shipped with the package (so the CLI and benchmarks can use it).

Nothing here is inference: every fake labels itself simulated wherever its protocol allows.
"""
