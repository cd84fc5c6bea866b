"""Plugins used by decoders' own tests."""
