"""Test harnesses that run inside the processes under test (never shipped in a package)."""
