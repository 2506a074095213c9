package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Client talks to one brokerd over its Unix socket. It is safe for concurrent use. Create it with
// New and Close it when done.
type Client struct {
	path   string
	conn   *grpc.ClientConn
	search credbrokerv1.SearchServiceClient
	admin  credbrokerv1.AdminServiceClient

	// dialErr is the error of the latest failed connection attempt, cleared by a successful one. It
	// tells "nobody listens on the socket" apart from an Unavailable that brokerd itself returned
	// (for example when the upstream is down).
	dialErr atomic.Pointer[error]

	// trusted are the uids that may serve the socket (serverUIDs); dial refuses any other.
	trusted []uint32
	// attested fetches and renews tokens by attestation when no token was given (tokensource.go).
	attested *attestSource
}

// Option configures New.
type Option func(*options)

type options struct {
	token    string
	tokenSet bool // WithToken was given (even an empty token: no token at all)
	source   TokenSource
	dialOpts []grpc.DialOption

	serverUIDs []uint32 // WithServerUID
}

// WithToken sends token on every call as the metadata entry "authorization: Bearer <token>".
// SearchService calls need it; AdminService calls authorize by the caller's uid and ignore it.
// WithToken("") sends none and fetches none by attestation (for a caller that sets the
// authorization metadata per call itself).
func WithToken(token string) Option {
	return func(o *options) { o.token, o.tokenSet = token, true }
}

// WithDialOptions appends gRPC dial options after the client's own, so they can override them
// (tests use this; production callers rarely need it).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// New returns a client for the brokerd listening on socketPath; an empty path means
// DefaultSocket(). It does not connect: the first call does, and reports an unreachable socket as
// an ErrUnavailable that says so (a socket the caller may not open: ErrSocketDenied).
//
// Every connection first checks who serves the socket (SO_PEERCRED): root, the client's own
// effective uid, a uid in $CREDBROKER_SERVER_UID or one given WithServerUID. Any other uid may be
// squatting on the path, so the call fails with ErrUntrustedServer before a byte (token, secret or
// request) is written.
//
// SearchService calls carry a token: WithToken's, WithTokenSource's or WithTokenFile's; with none
// of these, $CREDBROKER_TOKEN; and without that, tokens fetched by attestation (FetchToken: no
// secret, brokerd identifies this process and matches an operator's `brokerctl workload add`),
// renewed in the background at about two thirds of their lifetime, retried with backoff, so calls
// never carry an expired token. A call refused as Unauthenticated with a fetched token (revoked
// by a brokerd restart) is retried once with a fresh one. AdminService calls need no token.
func New(socketPath string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if socketPath == "" {
		socketPath = DefaultSocket()
	}
	abs, err := filepath.Abs(socketPath)
	if err != nil {
		return nil, fmt.Errorf("socket path %q: %w", socketPath, err)
	}
	trusted, err := serverUIDs(os.Getenv, os.Geteuid(), o.serverUIDs)
	if err != nil {
		return nil, err
	}
	c := &Client{path: abs, trusted: trusted}

	// The socket is local and its peer is authenticated by SO_PEERCRED on the server side: there
	// is no TLS to negotiate.
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(c.dial),
		// Dialling a local socket is cheap: after brokerd restarts, a long-lived client (an MCP
		// server) should find it within a couple of seconds, not after gRPC's default backoff,
		// which grows to two minutes during a long outage.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	o.token = strings.TrimSpace(o.token) // a token read from a file usually ends in a newline
	if o.token != "" {
		if !validHeaderValue(o.token) {
			// Never echo the token: it is a secret, and this may end up in a log.
			return nil, errors.New("token contains characters that cannot be sent in a gRPC header; is it a credbroker token?")
		}
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken(o.token)))
	}
	// No token option: $CREDBROKER_TOKEN, else tokens fetched by attestation and renewed in the
	// background (tokensource.go); the first SearchService call fetches the first one.
	var attested *attestSource
	if !o.tokenSet && o.source == nil {
		if env := strings.TrimSpace(os.Getenv(TokenEnv)); env != "" {
			if !validHeaderValue(env) {
				return nil, errors.New("$" + TokenEnv + " contains characters that cannot be sent in a gRPC header; is it a credbroker token?")
			}
			dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken(env)))
		} else {
			attested = newAttestSource(attestFetch(c))
			o.source = attested
		}
	}
	if o.source != nil && !o.tokenSet {
		dialOpts = append(dialOpts, grpc.WithChainUnaryInterceptor(sourceUnary(o.source)), grpc.WithChainStreamInterceptor(sourceStream(o.source)))
	}
	dialOpts = append(dialOpts, o.dialOpts...)

	conn, err := grpc.NewClient("unix://"+abs, dialOpts...)
	if err != nil {
		if attested != nil {
			attested.close()
		}
		return nil, fmt.Errorf("set up connection to brokerd at %s: %w", abs, err)
	}
	c.attested = attested
	c.conn = conn
	c.search = credbrokerv1.NewSearchServiceClient(conn)
	c.admin = credbrokerv1.NewAdminServiceClient(conn)
	return c, nil
}

// A connect that finds brokerd's accept queue full (EAGAIN) is tried again after a pause growing
// from busyRetryMin to busyRetryMax (jittered), until the dial's deadline.
const (
	busyRetryMin = time.Millisecond
	busyRetryMax = 50 * time.Millisecond
)

// onBusy, when set (tests), is called each time a connect found the accept queue full.
var onBusy func()

// dial connects to the socket, checks who serves it, and remembers why it failed, for
// (*Client).convert.
func (c *Client) dial(ctx context.Context, _ string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	for wait := busyRetryMin; errors.Is(err, syscall.EAGAIN); wait = min(2*wait, busyRetryMax) {
		// brokerd's accept queue is full: it is alive, and busy, or another local user is
		// connecting in a loop to keep it full, which needs no token. A connect to a Unix socket
		// then fails at once, where TCP's would wait its turn: wait it here, until the deadline,
		// or one such user would keep every client (an admin's brokerctl too) out.
		if onBusy != nil {
			onBusy()
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
			conn, err = d.DialContext(ctx, "unix", c.path)
			continue
		}
		break
	}
	if err != nil {
		cause := err
		// "dial unix /path: connect: no such file or directory" names the path, which the
		// unreachable message already does; keep the part that says why.
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			cause = op.Err
		}
		c.dialErr.Store(&cause)
		return nil, err
	}
	// Before gRPC writes its preface: nothing may reach a server we do not trust.
	if err := checkServer(conn, c.path, c.trusted); err != nil {
		conn.Close()
		c.dialErr.Store(&err)
		return nil, err
	}
	c.dialErr.Store(nil)
	return conn, nil
}

// Close releases the connection. Calls in flight fail with ErrCanceled.
func (c *Client) Close() error {
	if c.attested != nil {
		c.attested.close()
	}
	return c.conn.Close()
}

// Health asks brokerd's grpc.health.v1 service whether service ("" for the whole server) is
// serving. It needs no token and no admin rights. Errors are converted like every call's: an
// unreachable socket is an ErrUnavailable that says why (ErrSocketDenied for one the caller may not
// open), an unknown service ErrNotFound.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, c.convert(err)
	}
	return resp.GetStatus(), nil
}

// Conn returns the underlying connection, e.g. for grpc_health_v1 checks. Don't close it: use Close.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Socket returns the absolute socket path the client connects to.
func (c *Client) Socket() string { return c.path }

// convert maps a call's error to an *Error (see fromStatus), turning a failed connection into the
// "cannot reach brokerd" message.
func (c *Client) convert(err error) error {
	if err == nil {
		return nil
	}
	if status.Code(err) == codes.Unavailable {
		if cause := c.dialErr.Load(); cause != nil {
			var untrusted *untrustedServer
			if errors.As(*cause, &untrusted) {
				return untrusted.asError()
			}
			return unreachable(c.path, *cause)
		}
	}
	return fromStatus(err)
}

// Search runs one search with the client's token (see New).
func (c *Client) Search(ctx context.Context, req *credbrokerv1.SearchRequest) (*credbrokerv1.SearchResponse, error) {
	resp, err := c.search.Search(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// WhoAmI describes the token the client was created with.
func (c *Client) WhoAmI(ctx context.Context) (*credbrokerv1.WhoAmIResponse, error) {
	resp, err := c.search.WhoAmI(ctx, &credbrokerv1.WhoAmIRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// PutCredential stores a new credential as version 1; ErrAlreadyExists if the name is taken.
func (c *Client) PutCredential(ctx context.Context, name string, value []byte) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.PutCredential(ctx, &credbrokerv1.PutCredentialRequest{Name: name, Value: value})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// RotateCredential stores a new version of an existing credential; ErrNotFound if there is none.
func (c *Client) RotateCredential(ctx context.Context, name string, value []byte) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.RotateCredential(ctx, &credbrokerv1.RotateCredentialRequest{Name: name, Value: value})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// ListCredentials returns every credential's metadata, sorted by name.
func (c *Client) ListCredentials(ctx context.Context) ([]*credbrokerv1.Credential, error) {
	resp, err := c.admin.ListCredentials(ctx, &credbrokerv1.ListCredentialsRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredentials(), nil
}

// DeleteCredential removes a credential and all its versions.
func (c *Client) DeleteCredential(ctx context.Context, name string) error {
	_, err := c.admin.DeleteCredential(ctx, &credbrokerv1.DeleteCredentialRequest{Name: name})
	return c.convert(err)
}

// MintToken creates a token. The response holds the token secret, which cannot be recovered later.
func (c *Client) MintToken(ctx context.Context, req *credbrokerv1.MintTokenRequest) (*credbrokerv1.MintTokenResponse, error) {
	resp, err := c.admin.MintToken(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// ListTokens returns one page of tokens; see ListAllTokens to get them all.
func (c *Client) ListTokens(ctx context.Context, req *credbrokerv1.ListTokensRequest) (*credbrokerv1.ListTokensResponse, error) {
	resp, err := c.admin.ListTokens(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// listAllPageSize is the server's maximum page size: fewest round trips.
const listAllPageSize = 1000

// ListAllTokens follows next_page_token until the last page and returns every token, in id order.
// includeExpired also returns expired and revoked tokens.
func (c *Client) ListAllTokens(ctx context.Context, includeExpired bool) ([]*credbrokerv1.TokenInfo, error) {
	var all []*credbrokerv1.TokenInfo
	req := &credbrokerv1.ListTokensRequest{PageSize: listAllPageSize, IncludeExpired: includeExpired}
	for {
		resp, err := c.ListTokens(ctx, req)
		if err != nil {
			return nil, err
		}
		all = append(all, resp.GetTokens()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return all, nil
		}
		if next == req.PageToken {
			// A server bug, but one that would otherwise loop forever.
			return nil, &Error{Code: codes.Internal, Message: "brokerd returned the same page token twice while listing tokens"}
		}
		req.PageToken = next
	}
}

// RevokeToken revokes the token with the given public id; ErrNotFound for an unknown id.
func (c *Client) RevokeToken(ctx context.Context, id string) (*credbrokerv1.TokenInfo, error) {
	resp, err := c.admin.RevokeToken(ctx, &credbrokerv1.RevokeTokenRequest{Id: id})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetToken(), nil
}

// Status reports brokerd's version, uptime and counts.
func (c *Client) Status(ctx context.Context) (*credbrokerv1.StatusResponse, error) {
	resp, err := c.admin.Status(ctx, &credbrokerv1.StatusRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// GetToken returns one token's details (never its secret): uses left, last use, limits.
func (c *Client) GetToken(ctx context.Context, id string) (*credbrokerv1.TokenInfo, error) {
	resp, err := c.admin.GetToken(ctx, &credbrokerv1.GetTokenRequest{Id: id})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetToken(), nil
}

// ListAudit returns one page of audit records.
func (c *Client) ListAudit(ctx context.Context, req *credbrokerv1.ListAuditRequest) ([]*credbrokerv1.AuditRecord, error) {
	resp, err := c.admin.ListAudit(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetRecords(), nil
}

// WatchAudit follows the audit log: it calls fn with the records after req.AfterSeq (at or after
// req.Since) that are already written, then with each new batch as brokerd commits it, in chain
// order. It returns when ctx ends (ctx's error, as ErrCanceled or ErrDeadlineExceeded), when fn
// returns an error (that error) or when the stream fails (brokerd stopping: ErrUnavailable). A
// brokerd older than the WatchAudit call answers ErrUnimplemented; ListAudit works there.
func (c *Client) WatchAudit(ctx context.Context, req *credbrokerv1.WatchAuditRequest, fn func([]*credbrokerv1.AuditRecord) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream when fn fails
	stream, err := c.admin.WatchAudit(ctx, req)
	if err != nil {
		return c.convert(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return c.convert(err)
		}
		if err := fn(resp.GetRecords()); err != nil {
			return err
		}
	}
}

// VerifyAudit asks brokerd to walk its audit hash chain.
func (c *Client) VerifyAudit(ctx context.Context) (*credbrokerv1.VerifyAuditResponse, error) {
	resp, err := c.admin.VerifyAudit(ctx, &credbrokerv1.VerifyAuditRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// bearerToken attaches "authorization: Bearer <token>" to every call. It does not require transport
// security because the transport is a local Unix socket that only the local kernel can see.
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

// validHeaderValue reports whether s can be sent as a gRPC metadata value: printable ASCII only.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// SetCredentialLimits sets a credential's rate limit and monthly credit ceiling (nil clears them).
func (c *Client) SetCredentialLimits(ctx context.Context, name string, l *credbrokerv1.CredentialLimits) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.SetCredentialLimits(ctx, &credbrokerv1.SetCredentialLimitsRequest{Name: name, Limits: l})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// Usage sums calls, credits, cache hits and errors per token or credential.
func (c *Client) Usage(ctx context.Context, req *credbrokerv1.UsageRequest) (*credbrokerv1.UsageResponse, error) {
	resp, err := c.admin.Usage(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}
