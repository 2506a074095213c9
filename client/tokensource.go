package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TokenSource gives the token for the next SearchService call. It is called on every call, so it
// must be cheap when it has a token at hand; it must be safe for concurrent use.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// invalidator is a TokenSource that can drop a token brokerd refused (revoked, say, because
// brokerd restarted), so the call is retried once with a fresh one.
type invalidator interface {
	invalidate(token string)
}

// WithTokenSource takes each call's token from src (for instance a secret manager's). Without a
// token option and without CREDBROKER_TOKEN, New fetches tokens by attestation (see New).
func WithTokenSource(src TokenSource) Option {
	return func(o *options) { o.source = src }
}

// WithTokenFile reads the token from path, and again whenever the file changes (its size,
// modification time or inode): a token rotated into the file by another process is picked up by
// the next call, with no restart.
func WithTokenFile(path string) Option {
	return func(o *options) { o.source = &fileSource{path: path} }
}

// TokenEnv is the environment variable New reads a token from when no token option is given.
const TokenEnv = "CREDBROKER_TOKEN"

// searchPrefix names the calls that carry a token: every SearchService call but FetchToken.
const (
	searchPrefix     = "/credbroker.v1.SearchService/"
	fetchTokenMethod = searchPrefix + "FetchToken"
)

// needsToken reports whether method carries a bearer token.
func needsToken(method string) bool {
	return strings.HasPrefix(method, searchPrefix) && method != fetchTokenMethod
}

// withSourceToken returns ctx carrying src's token for method, if it needs one.
func withSourceToken(ctx context.Context, src TokenSource, method string) (context.Context, string, error) {
	if !needsToken(method) {
		return ctx, "", nil
	}
	tok, err := src.Token(ctx)
	if err != nil {
		return nil, "", err
	}
	if !validHeaderValue(tok) {
		return nil, "", errors.New("the token source returned characters that cannot be sent in a gRPC header; is it a credbroker token?")
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), tok, nil
}

// sourceUnary sends src's token with SearchService calls; a call refused as Unauthenticated with a
// token the source can drop is retried once with a fresh token (it did nothing on the server).
func sourceUnary(src TokenSource) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		cctx, tok, err := withSourceToken(ctx, src, method)
		if err != nil {
			return err
		}
		err = invoker(cctx, method, req, reply, cc, opts...)
		inv, ok := src.(invalidator)
		if !ok || tok == "" || fromStatus(err) == nil || !errors.Is(fromStatus(err), ErrUnauthenticated) {
			return err
		}
		inv.invalidate(tok)
		if cctx, _, err = withSourceToken(ctx, src, method); err != nil {
			return err
		}
		return invoker(cctx, method, req, reply, cc, opts...)
	}
}

func sourceStream(src TokenSource) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cctx, _, err := withSourceToken(ctx, src, method)
		if err != nil {
			return nil, err
		}
		return streamer(cctx, desc, cc, method, opts...)
	}
}

// fileSource re-reads a token file when it changes.
type fileSource struct {
	path string
	mu   sync.Mutex
	key  fileStamp
	tok  string
}

type fileStamp struct {
	size  int64
	mtime time.Time
	ino   uint64
}

func (f *fileSource) Token(context.Context) (string, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	key := fileStamp{size: fi.Size(), mtime: fi.ModTime(), ino: inode(fi)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if key == f.key && f.tok != "" {
		return f.tok, nil
	}
	raw, err := ReadTokenFile(f.path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", f.path)
	}
	f.key, f.tok = key, tok
	return tok, nil
}

// maxTokenFile bounds what a token file may hold: a token is under a hundred bytes.
const maxTokenFile = 4096

// ReadTokenFile reads a token file as WithTokenFile does, at most 4 KiB of it: a larger file (a
// log named by mistake, a device) is refused, not read whole and sent as the token, and a FIFO
// nobody writes to reads as empty instead of blocking. Errors never quote the contents.
func ReadTokenFile(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO nobody writes to is opened without waiting for a writer, and reads as
	// empty; a pipe with a writer (--token-file <(pass show …)) is still read to its end.
	fd, err := os.OpenFile(path, os.O_RDONLY|openNonblock, 0)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	defer fd.Close()
	raw, err := io.ReadAll(io.LimitReader(fd, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if len(raw) > maxTokenFile {
		clear(raw)
		return nil, fmt.Errorf("token file %s is larger than %d bytes; it should hold only the token: is it the right file?", path, maxTokenFile)
	}
	return raw, nil
}

// Renewal of attested tokens.
const (
	// renewAt is the fraction of a token's lifetime after which it is renewed.
	renewNum, renewDen = 2, 3
	// retryMin and retryMax bound the backoff between failed renewals.
	retryMin = 200 * time.Millisecond
	retryMax = 30 * time.Second
	// expiryGuard: a token this close to its expiry is not handed out (a call takes time to arrive).
	expiryGuard = 2 * time.Second
	// minTokenLife: a fetched token with less life than this left when it arrives counts as a
	// failed fetch. It could be neither used nor renewed sensibly: taking it would fetch again at
	// once, in a loop that spends the uid's FetchToken rate and watches.
	minTokenLife = 100 * time.Millisecond
)

// fetchFunc fetches a token by attestation.
type fetchFunc func(ctx context.Context) (token string, expires time.Time, err error)

// attestSource fetches tokens by attestation (FetchToken) and renews them in the background at
// about two thirds of their lifetime, retrying with backoff; a call never gets a token that is
// about to expire (it waits for a fresh one instead).
type attestSource struct {
	fetch fetchFunc
	now   func() time.Time

	mu      sync.Mutex
	tok     string
	issued  time.Time
	expires time.Time
	// fetching is closed when the fetch in flight ends; nil when none is.
	fetching chan struct{}
	fetchErr error
	kick     chan struct{} // wakes the renewer after a token was obtained or dropped
	stop     chan struct{}
	stopOnce sync.Once
}

func newAttestSource(fetch fetchFunc) *attestSource {
	s := &attestSource{fetch: fetch, now: time.Now, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	go s.renew()
	return s
}

func (s *attestSource) close() { s.stopOnce.Do(func() { close(s.stop) }) }

// usable reports whether the current token may be handed out. Called with mu held.
func (s *attestSource) usable(now time.Time) bool {
	guard := min(expiryGuard, s.expires.Sub(s.issued)/6) // short ttls (tests) get a shorter guard
	return s.tok != "" && now.Add(guard).Before(s.expires)
}

func (s *attestSource) Token(ctx context.Context) (string, error) {
	for {
		s.mu.Lock()
		if s.usable(s.now()) {
			tok := s.tok
			s.mu.Unlock()
			return tok, nil
		}
		wait := s.startFetchLocked()
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		s.mu.Lock()
		err, ok := s.fetchErr, s.usable(s.now())
		tok := s.tok
		s.mu.Unlock()
		if ok {
			return tok, nil
		}
		if err != nil {
			return "", err
		}
	}
}

// startFetchLocked starts a fetch unless one is in flight, and returns its done channel.
func (s *attestSource) startFetchLocked() chan struct{} {
	if s.fetching != nil {
		return s.fetching
	}
	done := make(chan struct{})
	s.fetching = done
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		tok, exp, err := s.fetch(ctx)
		cancel()
		if err == nil {
			err = checkFetched(tok, exp, s.now())
		}
		s.mu.Lock()
		s.fetchErr = err
		if err == nil {
			s.tok, s.issued, s.expires = tok, s.now(), exp
		}
		s.fetching = nil
		s.mu.Unlock()
		close(done)
		if err == nil {
			s.wake()
		}
	}()
	return done
}

// checkFetched refuses a token FetchToken returned that cannot serve: empty, or expiring within
// minTokenLife of now (a registration's ttl too short, or no expiry at all).
func checkFetched(tok string, exp, now time.Time) error {
	if tok == "" {
		return &Error{Code: codes.Internal, Message: "brokerd answered FetchToken without a token; " +
			"check that brokerd and this client are of the same release"}
	}
	if exp.Unix() <= 0 {
		// Not a short ttl: no expiry at all (the field missing), which a brokerd of this
		// release never sends.
		return &Error{Code: codes.FailedPrecondition, Message: "brokerd issued a token without an expiry; it cannot be " +
			"renewed. Not a short registration --ttl: check that brokerd and this client are of the same release"}
	}
	if left := exp.Sub(now); left < minTokenLife {
		life := "already expired"
		if left > 0 {
			life = left.Round(time.Millisecond).String() + " left to live"
		}
		return &Error{Code: codes.FailedPrecondition, Message: fmt.Sprintf("brokerd issued a token that had %s when it "+
			"arrived (expiry %s); it cannot be used or renewed. The workload registration's ttl is too short: ask the "+
			"operator to register this program again with a longer one (`brokerctl workload add NAME ... --ttl 1h`)",
			life, exp.UTC().Format(time.RFC3339Nano))}
	}
	return nil
}

func (s *attestSource) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *attestSource) invalidate(tok string) {
	s.mu.Lock()
	if s.tok == tok {
		s.tok = ""
	}
	s.mu.Unlock()
}

// renew fetches a new token at two thirds of the current one's lifetime, retrying with backoff,
// until the client closes. Before the first token (fetched by the first call) it only waits.
func (s *attestSource) renew() {
	retry := retryMin
	for {
		s.mu.Lock()
		var wait time.Duration
		have := s.tok != ""
		if have {
			due := s.issued.Add(s.expires.Sub(s.issued) * renewNum / renewDen)
			wait = due.Sub(s.now())
		}
		s.mu.Unlock()
		var (
			timer <-chan time.Time
			t     *time.Timer
		)
		if have {
			t = time.NewTimer(max(wait, 0))
			timer = t.C
		}
		fired := false
		select {
		case <-s.stop:
		case <-s.kick: // a new token, or a dropped one: compute the renewal time again
		case <-timer:
			fired = true
		}
		if t != nil {
			t.Stop()
		}
		select {
		case <-s.stop:
			return
		default:
		}
		if !fired {
			continue
		}
		s.mu.Lock()
		done := s.startFetchLocked()
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-done:
		}
		s.mu.Lock()
		err := s.fetchErr
		s.mu.Unlock()
		if err == nil {
			retry = retryMin
			continue
		}
		// Keep the current token (calls still use it until it nears its expiry) and try again.
		select {
		case <-s.stop:
			return
		case <-time.After(retry):
		}
		retry = min(retry*2, retryMax)
	}
}

// attestFetch is the fetchFunc of a client: FetchToken over its own connection, so brokerd sees
// this process.
func attestFetch(c *Client) fetchFunc {
	return func(ctx context.Context) (string, time.Time, error) {
		resp, err := c.search.FetchToken(ctx, &credbrokerv1.FetchTokenRequest{})
		if err != nil {
			return "", time.Time{}, c.convert(err)
		}
		return resp.GetToken(), resp.GetExpiresAt().AsTime(), nil
	}
}
