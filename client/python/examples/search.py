#!/usr/bin/env python3
"""Searches through brokerd: python3 search.py QUERY [TOOL].

The socket and token come from the environment (CREDBROKER_SOCKET, CREDBROKER_TOKEN); with no
token, the client fetches one by workload attestation. Run with client/python on PYTHONPATH.
"""
import json
import sys

import credbroker


def main() -> int:
    query = sys.argv[1] if len(sys.argv) > 1 else "mcp security"
    tool = sys.argv[2] if len(sys.argv) > 2 else "web_search"
    with credbroker.Client() as c:
        try:
            resp = c.search(query, tool=tool, num_results=3)
        except credbroker.BrokerError as e:
            # Act on the reason, never on the message (README.md: "Errors a program can act on").
            print(e, file=sys.stderr)  # for a human: what happened, and who must act
            print(json.dumps({"error": e.reason, "code": e.code.name, "retry_delay": e.retry_delay}))
            return 1
    for r in resp.results:
        print(f"{r.position}. {r.title} <{r.url}>")
    print(json.dumps({"credits": resp.credits, "cached": resp.cached, "raw": resp.results[0].raw}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
