"""
What operators see: the access log, metrics, the status pages and the admin
site that serves them.  It reads the other parts only through the small
interfaces they implement.
"""
