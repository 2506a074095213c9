package broker

import "context"

// CallInfo collects what a call did, for the audit record the gRPC edge writes when the call ends:
// which token, tool and credential version it used, and a keyed digest of the query. The edge puts
// one in the context; domain code fills in what it learns. It never holds a secret or a raw query.
type CallInfo struct {
	// Method is the call's method as its records name it (a gRPC full method, or the HTTP
	// front's HTTPSearchMethod...): a search whose caller left writes its settle record under it.
	// Empty means the gRPC Search.
	Method string
	// TokenID is the presented token's id, set as soon as it parses (a refusal's record names
	// it); Verified says its secret matched, so the id is the caller's own token.
	TokenID           string
	Verified          bool
	Tool              string
	Credential        string
	CredentialVersion uint64
	QueryLen          int
	QueryMAC          string
	// Event names what an admin call changed ("rotate", "mint", ...) or a notable outcome
	// ("bound-token-misuse", "fallback-previous-version").
	Event string
	// TokenLabel is the calling token's label, for usage reports.
	TokenLabel string
	// Workload is the registration a FetchToken matched.
	Workload string
	// Credits spent upstream; CreditsSaved is what a cache hit would otherwise have cost.
	Credits, CreditsSaved uint64

	// Outcome, set by the gRPC auditor for calls that commit their change together with their
	// audit record (MintToken), builds the call's record with the given code. Recorded is set once
	// the OK record is durable; the auditor then writes no outcome record unless the call still
	// fails. The latency in the record, as in every record, stops before its own commit.
	Outcome  func(code string) CallRecord
	Recorded bool
}

type callInfoKey struct{}

// WithCallInfo returns ctx carrying ci.
func WithCallInfo(ctx context.Context, ci *CallInfo) context.Context {
	return context.WithValue(ctx, callInfoKey{}, ci)
}

// callInfo returns the context's CallInfo, or a throwaway one so callers never check for nil.
func callInfo(ctx context.Context) *CallInfo {
	if ci, ok := ctx.Value(callInfoKey{}).(*CallInfo); ok {
		return ci
	}
	return &CallInfo{}
}
