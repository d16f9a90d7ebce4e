"""
The forwarding engine, independent of the front that feeds it: the routing
contract, the one failure classification, the exchange of one request with
instances, the header rules, Upgrade tunnels, and the twisted.web face.
"""
