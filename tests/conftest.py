"""Shared pytest set-up. The emulator fixtures come from flip_emulator's pytest11 plugin (an entry point)."""
