"""Converge: plan (pure), the batched apply script, generations and rollback, and
the two functions that touch a host (gather, apply), over one host or a fleet.
"""
