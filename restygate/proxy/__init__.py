"""
The forwarding engine: the routing contract, the exchange of one request
with an instance, the header rules and the relay of bodies.
"""
