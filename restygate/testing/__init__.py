"""
Test doubles users may run against their own setups too (as C{treq.testing}
does): a Consul HTTP API server that follows Consul's documented behaviour.
"""
