"""Benchmarks: each module measures one component against its physical limit and prints ratios.

Run them with ``make bench`` (all) or ``python -m bench NAME``; numbers are never asserted by
tests. Results worth keeping go to ``bench/RESULTS.md`` with the machine and the command.
"""
