"""
The client side of the gateway: listeners, the parser seam and the lean
HTTP/1.1 server protocol that turns client bytes into requests for the
engine, with every refusal of hostile input, and the gateway's own answers.
"""
