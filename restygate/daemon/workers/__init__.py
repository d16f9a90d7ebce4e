"""
Several worker processes behind the same listeners: the pool the daemon
runs, the child each worker process is, and the admin side that merges them.
"""
