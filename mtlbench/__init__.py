"""mtlbench: a benchmark harness for multi-task learning in dense scene understanding."""

__version__ = "0.1.0"
