"""ate-master: the test cell controller of a semiconductor tester."""

__version__ = "0.1.0"
