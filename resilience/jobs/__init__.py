"""Reference jobs that exercise fusion-resilience end to end.

Each subpackage is one job (its input generator, its stages and the facts an
independent checker needs); importing this package loads nothing heavy.
"""
