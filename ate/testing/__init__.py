"""Test infrastructure shared by the test suite, the benchmarks and the demo."""
