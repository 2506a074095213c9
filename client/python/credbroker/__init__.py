"""credbroker: a Python client for brokerd (see client.py). The generated code is in
credbroker.v1 (scripts/gen.sh; do not edit)."""

from credbroker.client import (
    BrokerError,
    Client,
    SearchResponse,
    SearchResult,
    UntrustedServerError,
    default_socket,
)

__all__ = ["BrokerError", "Client", "SearchResponse", "SearchResult", "UntrustedServerError",
           "default_socket"]
