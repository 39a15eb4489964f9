"""`make bench`: Goldilocks benchmarks on real Open vSwitch and Mininet, written to docs/benchmarks.md."""
