package broker

import (
	"crypto/subtle"
	"math"
	"time"

	"github.com/credbroker/credbroker/broker/token"
)

// RefusedRawKey is the audit event of a request that presented a stored upstream key where a
// broker token belongs: some client still holds the real key, and the operator should rotate it.
const RefusedRawKey = "raw-key-presented"

// PresentedRawKey reports whether presented is a version (current, previous or pending) of a
// stored credential, and which. It compares in constant time and returns no key: the HTTP front
// refuses such a request before any upstream call. A well-formed broker token is never a key.
func (b *Broker) PresentedRawKey(presented string) (credential string, ok bool) {
	if presented == "" {
		return "", false
	}
	if _, err := token.Parse(presented); err == nil {
		return "", false
	}
	creds, err := b.store.ListCredentials()
	if err != nil {
		return "", false
	}
	for _, c := range creds {
		for _, v := range []uint64{c.Version, c.Previous, c.Pending} {
			if v == 0 {
				continue
			}
			key, err := b.store.LoadCredentialVersion(c.Name, v)
			if err != nil {
				continue
			}
			same := subtle.ConstantTimeCompare(key, []byte(presented)) == 1
			clear(key)
			if same {
				return c.Name, true
			}
		}
	}
	return "", false
}

// RateLimitState is a token's own rate limit as its limiter stands now, for X-RateLimit-* headers.
type RateLimitState struct {
	Limit, Remaining int
	Reset            time.Time // when the limiter is full again
}

// TokenRateLimit returns the state of token id's rate limit, false if it has none or is not loaded.
func (b *Broker) TokenRateLimit(id string) (RateLimitState, bool) {
	b.mu.RLock()
	st, ok := b.tokens[id]
	b.mu.RUnlock()
	if !ok || !st.rateLimited() {
		return RateLimitState{}, false
	}
	t := st.record()
	now := b.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lim == nil {
		return RateLimitState{Limit: int(t.RateLimit), Remaining: int(t.RateLimit), Reset: now}, true
	}
	tokens := st.lim.TokensAt(now)
	missing := float64(t.RateLimit) - tokens
	every := t.RatePeriod / time.Duration(t.RateLimit)
	reset := now.Add(time.Duration(math.Ceil(missing * float64(every))))
	return RateLimitState{Limit: int(t.RateLimit), Remaining: max(0, int(math.Floor(tokens))), Reset: reset}, true
}

// The HTTP front's searches as the audit log names them: Scavio's own paths, so they are told
// apart from gRPC searches but counted with them (Usage).
const (
	HTTPSearchMethod = "POST /api/v1/search"
	HTTPGoogleMethod = "POST /api/v1/google"
	// HTTPTokenMethod is FetchToken over HTTP (attestation on the Unix-socket HTTP front).
	HTTPTokenMethod = "POST /credbroker/v1/token"
)

// isSearchMethod reports whether an audit record's method is a search, over gRPC or HTTP.
func isSearchMethod(m string) bool {
	return m == searchMethod || m == HTTPSearchMethod || m == HTTPGoogleMethod
}
