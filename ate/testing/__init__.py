"""Test peers shared by the test suite and the benchmarks (``peers``: a scriptable handler
client). The private broker the demo ships with is :mod:`ate.broker`; ``ate.testing.broker``
is kept as another name for it."""
