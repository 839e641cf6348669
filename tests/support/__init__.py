"""Test harnesses that run inside the processes under test, and the helpers tests submit jobs
with (never shipped in a package)."""
