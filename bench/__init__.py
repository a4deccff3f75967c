"""Benchmarks: each prints a ratio measured in one run (ours vs a plain baseline on the same machine)."""
