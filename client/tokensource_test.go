package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// TestAttestSourceRenewsBeforeExpiry: across several short lifetimes, every caller gets a token
// that is still valid, and tokens are renewed in the background (more fetches than the first).
func TestAttestSourceRenewsBeforeExpiry(t *testing.T) {
	const ttl = 300 * time.Millisecond
	var fetches atomic.Int64
	var failNext atomic.Bool
	var expiries sync.Map // token -> its expiry
	src := newAttestSource(func(context.Context) (string, time.Time, error) {
		n := fetches.Add(1)
		if failNext.CompareAndSwap(true, false) {
			return "", time.Time{}, errors.New("brokerd restarting")
		}
		tok, exp := fmt.Sprintf("tok-%d", n), time.Now().Add(ttl)
		expiries.Store(tok, exp)
		return tok, exp, nil
	})
	defer src.close()
	ctx := testContext(t)
	seen := map[string]bool{}
	expiry := func(tok string) time.Time {
		exp, _ := expiries.Load(tok)
		return exp.(time.Time)
	}
	for len(seen) < 5 {
		tok, err := src.Token(ctx)
		if err != nil {
			t.Fatalf("call %d: %v", len(seen), err)
		}
		if exp := expiry(tok); !time.Now().Before(exp) {
			t.Fatalf("got token %s past its expiry", tok)
		}
		if !seen[tok] && len(seen) == 2 {
			failNext.Store(true) // one renewal fails: it is retried, calls keep working
		}
		seen[tok] = true
		time.Sleep(5 * time.Millisecond) // a caller's pace, not a synchronisation
	}
}

// A dropped token (brokerd refused it) is replaced on the next call.
func TestAttestSourceInvalidate(t *testing.T) {
	var n atomic.Int64
	src := newAttestSource(func(context.Context) (string, time.Time, error) {
		return fmt.Sprintf("tok-%d", n.Add(1)), time.Now().Add(time.Hour), nil
	})
	defer src.close()
	a, err := src.Token(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	src.invalidate(a)
	b, err := src.Token(testContext(t))
	if err != nil || b == a {
		t.Fatalf("after invalidate: %q %v (was %q)", b, err, a)
	}
}

func TestTokenFileIsReread(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("cbt_one_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &fileSource{path: p}
	if tok, err := src.Token(context.Background()); err != nil || tok != "cbt_one_x" {
		t.Fatalf("%q %v", tok, err)
	}
	// A new file renamed over the old one: another inode, so it is read again whatever the mtime.
	q := p + ".new"
	if err := os.WriteFile(q, []byte("cbt_two_y"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(q, p); err != nil {
		t.Fatal(err)
	}
	if tok, err := src.Token(context.Background()); err != nil || tok != "cbt_two_y" {
		t.Fatalf("after rewrite: %q %v", tok, err)
	}
	os.WriteFile(p, nil, 0o600)
	if _, err := src.Token(context.Background()); err == nil {
		t.Fatal("empty token file accepted")
	}
}

func TestWithTokenFileSendsIt(t *testing.T) {
	f := &fakeBroker{}
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("cbt_abc_def\n"), 0o600)
	c := newClient(t, startBroker(t, f), WithTokenFile(p))
	if _, err := c.WhoAmI(testContext(t)); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.authz) != 1 || len(f.authz[0]) != 1 || f.authz[0][0] != "Bearer cbt_abc_def" {
		t.Fatalf("authorization = %q", f.authz)
	}
}

// TestAttestSourceRefusesTokenExpiredOnArrival: brokerd answering FetchToken with a token that
// has already expired (or has no expiry, or an empty secret) makes Token fail at once with advice
// for the operator, after one fetch: it must not fetch again and again until the caller gives up,
// spending the uid's fetch burst and watches.
func TestAttestSourceRefusesTokenExpiredOnArrival(t *testing.T) {
	for _, tc := range []struct {
		name string
		tok  string
		exp  func() time.Time
		want error
	}{
		{"expired", "tok", func() time.Time { return time.Now().Add(-time.Second) }, ErrFailedPrecondition},
		{"no expiry", "tok", func() time.Time { return time.Unix(0, 0) }, ErrFailedPrecondition},
		{"expires on arrival", "tok", func() time.Time { return time.Now().Add(time.Millisecond) }, ErrFailedPrecondition},
		{"empty token", "", func() time.Time { return time.Now().Add(time.Hour) }, ErrInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			var fetches atomic.Int64
			src := newAttestSource(func(context.Context) (string, time.Time, error) {
				if fetches.Add(1) >= 20 {
					cancel() // the old code spins until the caller gives up: end it here
				}
				return tc.tok, tc.exp(), nil
			})
			defer src.close()
			_, err := src.Token(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("Token: err %v after %d fetches (caller's context: %v); want a refusal after one fetch", err, fetches.Load(), ctx.Err())
			}
			if n := fetches.Load(); n != 1 {
				t.Errorf("%d fetches; want 1", n)
			}
			if !errors.Is(err, tc.want) || tc.want == ErrFailedPrecondition && !strings.Contains(err.Error(), "--ttl") {
				t.Errorf("err = %v; want %v (naming --ttl if the ttl is at fault)", err, tc.want)
			}
		})
	}
}

// TestAttestSourceRenewalBacksOffOnExpiredTokens: a renewal answered with an expired token counts
// as a failed renewal: the current token stays in use and the renewer backs off instead of
// fetching in a loop. (synctest's clock: the renewer's timers advance only when everything waits.)
func TestAttestSourceRenewalBacksOffOnExpiredTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = time.Hour
		var fetches atomic.Int64
		stuck := make(chan struct{})
		src := newAttestSource(func(ctx context.Context) (string, time.Time, error) {
			n := fetches.Add(1)
			switch {
			case n == 1:
				return "tok-1", time.Now().Add(ttl), nil
			case n >= 20: // the old code's renewer never waits: park it so the bubble settles
				select {
				case <-stuck:
				case <-ctx.Done():
				}
				return "", time.Time{}, errors.New("stopped")
			}
			return fmt.Sprintf("tok-%d", n), time.Now().Add(-time.Second), nil
		})
		defer close(stuck)
		defer src.close()
		if tok, err := src.Token(t.Context()); err != nil || tok != "tok-1" {
			t.Fatalf("first token: %q %v", tok, err)
		}
		// Renewal is due at 40 minutes; a second later the renewer has tried a few times.
		time.Sleep(ttl*renewNum/renewDen + time.Second)
		synctest.Wait()
		if n := fetches.Load(); n < 2 || n > 6 {
			t.Errorf("%d fetches a second after the renewal was due; want a renewal and a few backed-off retries", n)
		}
		if tok, err := src.Token(t.Context()); err != nil || tok != "tok-1" {
			t.Errorf("after failed renewals: %q %v; want tok-1, still valid", tok, err)
		}
	})
}

// TestTokenFileNotATokenRefused: a token file that cannot be a token (a FIFO nobody writes to,
// something far larger than a token) is refused at once with what to fix, not read: the FIFO would
// hang every call until a writer came, and a log or a device named by mistake would be read whole
// into memory and sent as the bearer token. A pipe with a writer (a shell's <(…)) still works.
func TestTokenFileNotATokenRefused(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("a", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.Write([]byte("cbt_from_pipe\n"))
		w.Close()
	}()
	for _, tc := range []struct{ name, path, want string }{
		{"larger than a token", big, "larger than"},
		{"fifo without a writer", fifo, "is empty"},
		{"device", "/dev/zero", "larger than"},
		{"pipe with a writer", fmt.Sprintf("/proc/self/fd/%d", r.Fd()), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &fileSource{path: tc.path}
			type answer struct {
				tok string
				err error
			}
			got := make(chan answer, 1)
			go func() {
				tok, err := src.Token(context.Background())
				got <- answer{tok, err}
			}()
			// The bound only turns a hang into a failure; a fixed reader answers at once.
			select {
			case a := <-got:
				if tc.want == "" {
					if a.err != nil || a.tok != "cbt_from_pipe" {
						t.Fatalf("got %q %v, want the token written to the pipe", a.tok, a.err)
					}
					return
				}
				if a.err == nil || !strings.Contains(a.err.Error(), tc.want) || strings.Contains(a.err.Error(), "aaaa") {
					t.Fatalf("got a %d-byte token, err %v; want a refusal saying %q (and no file contents)", len(a.tok), a.err, tc.want)
				}
			case <-time.After(10 * time.Second):
				if w, err := os.OpenFile(tc.path, os.O_WRONLY, 0); err == nil { // release the reader
					w.Close()
				}
				t.Fatal("Token waits for a writer on a FIFO")
			}
		})
	}
}
