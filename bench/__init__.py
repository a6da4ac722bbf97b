"""Benchmarks (``make bench``): each prints time and peak memory as ratios against a floor measured in the same run."""
