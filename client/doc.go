// Package client is the Go API that MCP servers and brokerctl use to talk to brokerd over its Unix
// socket: typed calls for SearchService and AdminService, the default socket location, and errors
// mapped back from gRPC status codes to sentinels that callers can test with errors.Is.
//
// It must never import store or broker: an MCP server that links this package gets a socket path
// and a token, never key material, a database or a credential value.
package client
