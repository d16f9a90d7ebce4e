"""
The process: the twistd command and its options, the assembly of a gateway
from its configuration, live reload and worker processes.
"""
