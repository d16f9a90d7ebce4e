"""
The instance side: restygate's own HTTP/1.1 client protocol, its pool of
connections per instance, TLS to them, and the policy that chooses and
judges them (balancer, outliers, retries).
"""
