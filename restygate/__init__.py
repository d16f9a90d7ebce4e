"""
restygate: an HTTP gateway that routes C{/<datacenter>/<service>/<path>} to the
passing instances Consul knows for that service in that datacenter, over pooled
HTTP/1.1 keep-alive connections.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
