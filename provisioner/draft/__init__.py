"""Draft: a profile written for a host from its facts and the library.
"""
