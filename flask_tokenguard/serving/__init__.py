"""Serving: the waitress runner and the Windows service around it."""
