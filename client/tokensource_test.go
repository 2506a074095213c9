package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
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
