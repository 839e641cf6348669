"""Test harnesses (the server and demo processes, Postgres, Redis, workers, nginx, probes that
run inside the processes under test), and the helpers tests submit jobs
with (never shipped in a package)."""
