// Package upstream is the HTTP client brokerd uses to call the Scavio search API on behalf of its
// callers: it attaches the credential in the style the endpoint expects (x-api-key for contract A,
// Authorization: Bearer for contract B), bounds every attempt and every response, retries only what
// is safe to retry (429, 5xx, transport failures) within the caller's deadline, and maps the outcome
// to a small set of sentinel errors the gRPC edge can translate once.
//
// It holds no credentials of its own: the key is passed to each Do call and forgotten when it
// returns. It knows nothing about tokens, scopes, storage or gRPC.
//
// It must never put the key, the upstream's error message text or any response body bytes in an
// error, never hand back a 2xx body or header that still holds the key (an upstream that reflects
// request fields would send it on to every client and cache: RedactJSON runs on the raw bytes
// first, and Response.KeyReflected says it happened), never follow a redirect (a redirect would
// carry the key to another origin), never use a proxy from the environment, never wait past the
// caller's deadline (except DoDetached's attempt already sent, which runs to its answer or its
// attempt timeout so that an answer the upstream billed is not lost), and never retry a request
// the upstream refused as bad, unauthorized or out of credits. MayHaveBilled tells a failure the
// upstream may have charged for from one it provably did not.
package upstream
