"""Fault injection: one module per area, each test quoting the line of issue 12 it covers."""
