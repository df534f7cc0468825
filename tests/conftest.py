"""Shared pytest set-up."""

pytest_plugins = ["flip_nvflare.emulator.testing"]
