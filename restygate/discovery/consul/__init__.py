"""
Discovery from Consul: the HTTP API client (the only code that knows
Consul's wire format), the blocking-query watches and the source built on them.
"""
