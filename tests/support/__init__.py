"""Helpers shared by the test packages: a fake clock, and the simulator job builder and runner."""
