"""
The client side of the gateway: listeners and the HTTP/1.1 server that
turns client bytes into requests, with every refusal of hostile input.
"""
