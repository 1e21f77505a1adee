"""One module per server under test; each runs pinned to core 0 and obeys the harness on stdin."""
