"""Render: a resolved profile and its placement -> every file, handler and install
a target needs (``Rendered``), including the engine's command line.
"""
