"""
The instance side: the pooled HTTP/1.1 connections to instances, TLS to
them, and the policy that chooses and judges them (balancer, outliers, retries).
"""
