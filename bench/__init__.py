"""ChatAPI benchmark suite: every figure is a ratio against a baseline measured in the same run.

Run `python -m bench all` (or one scenario: `python -m bench fanout`); see BENCHMARKS.md.
"""
