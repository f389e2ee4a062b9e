"""Ray glue, one module per stage. Logic lives in core/, metrics.py and gates.py."""
