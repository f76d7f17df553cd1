"""Reliability tooling shared by the tests and bench/run_reliability.py: the bad-input corpus and how
each case is put to each channel (corpus), run/reset cycles and their memory (cycles), and the app
as a child process on a free port (app_server)."""
