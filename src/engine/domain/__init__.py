"""Pure domain: plan models, states and their one transition table, events.

This package imports nothing else of ours and does no I/O.
"""
