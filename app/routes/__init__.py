"""Routers, one per file: meta (registry, defaults), runs, teaching, pages.

What they share (dependencies, the run view) lives in app/deps.py; how errors
become answers lives in app/errors.py.
"""
