"""``make bench``: Shoal's benchmark table, beside bare-crun baselines measured in the same run.

    $ .venv/bin/python -m bench            # as root, from the repository root

Goals are targets, not asserts: the run exits 0 when it measured everything, whatever the
numbers, and non-zero only when the benchmark itself failed.
"""
