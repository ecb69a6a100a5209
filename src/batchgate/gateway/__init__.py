"""The HTTP gateway."""

from batchgate.gateway.app import create_gateway

__all__ = ["create_gateway"]
