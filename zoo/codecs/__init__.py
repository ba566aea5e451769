"""Codecs, one module each; see base.py for the protocol and registry.py for the list."""
