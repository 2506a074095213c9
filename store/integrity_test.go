package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// editFile opens the closed database file with bbolt alone (what someone with write access to the
// file can do) and runs fn on it.
func editFile(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// editBody rewrites the JSON body of a sealed value, keeping its stamp and tag: a forger who can
// write the file but has no record key.
func editBody(raw []byte, from, to string) []byte {
	stamp, tag, body, ok := splitSealed(raw)
	if !ok {
		panic("not sealed")
	}
	out := []byte{sealFormat}
	out = binary.BigEndian.AppendUint64(out, stamp)
	out = append(out, byte(len(tag)))
	out = append(out, tag...)
	return append(out, bytes.Replace(body, []byte(from), []byte(to), 1)...)
}

func mintAudited(t *testing.T, s *Store, tk Token) {
	t.Helper()
	if err := s.PutTokenAudited(context.Background(), tk, AuditRecord{Time: t0, Method: "mint", Code: "OK", TokenID: tk.ID}); err != nil {
		t.Fatal(err)
	}
}

func reopen(t *testing.T, path string, kek tink.AEAD) (*Store, error) {
	t.Helper()
	s, err := Open(path, kek, Options{})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// Editing, forging or swapping a token record in the file (brokerd stopped) is refused: the store
// does not open, and while it is open (the file written under it) the token does not load.
func TestTamperedTokenRefused(t *testing.T) {
	tokens := func(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketTokens) }
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
	}{
		{"widen scope", func(tx *bolt.Tx) error {
			return tokens(tx).Put([]byte("tokA"), editBody(tokens(tx).Get([]byte("tokA")), `"tools":["web_search"]`, `"tools":["web_search","google_search"]`))
		}},
		{"extend expiry", func(tx *bolt.Tx) error {
			return tokens(tx).Put([]byte("tokA"), editBody(tokens(tx).Get([]byte("tokA")), `"expires_at":"2026`, `"expires_at":"2099`))
		}},
		{"reset uses", func(tx *bolt.Tx) error {
			return tokens(tx).Put([]byte("tokA"), editBody(tokens(tx).Get([]byte("tokA")), `"uses":1,`, ``))
		}},
		{"forged unsealed record", func(tx *bolt.Tx) error {
			_, _, body, _ := splitSealed(tokens(tx).Get([]byte("tokA")))
			return tokens(tx).Put([]byte("tokA"), bytes.Clone(body))
		}},
		{"swap two tokens", func(tx *bolt.Tx) error {
			a, b := bytes.Clone(tokens(tx).Get([]byte("tokA"))), bytes.Clone(tokens(tx).Get([]byte("tokB")))
			if err := tokens(tx).Put([]byte("tokA"), b); err != nil {
				return err
			}
			return tokens(tx).Put([]byte("tokB"), a)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openStore(t)
			mintAudited(t, s, testToken("tokA", 5))
			mintAudited(t, s, testToken("tokB", 5))
			if _, err := s.UseToken("tokA", t0); err != nil {
				t.Fatal(err)
			}

			// While open: the file is written under the running store.
			checkpoint(t, s)
			if err := s.db.Update(tc.edit); err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetToken("tokA"); !errors.Is(err, ErrTampered) {
				t.Fatalf("GetToken: got %v, want ErrTampered", err)
			}
			if _, err := s.UseToken("tokA", t0); !errors.Is(err, ErrTampered) {
				t.Fatalf("UseToken: got %v, want ErrTampered", err)
			}
			if _, err := s.RevokeToken("tokA", t0); !errors.Is(err, ErrTampered) {
				t.Fatalf("RevokeToken: got %v, want ErrTampered", err)
			}
			if _, _, err := s.ListTokens("", 10, nil); !errors.Is(err, ErrTampered) {
				t.Fatalf("ListTokens: got %v, want ErrTampered", err)
			}
			v, err := s.VerifyAudit()
			if err != nil || v.OK || !strings.Contains(v.Problem, `"tokA" does not verify`) {
				t.Fatalf("VerifyAudit: %+v %v", v, err)
			}
			s.Close()

			// Closed, then started again: refused, naming the record and what to do.
			_, err = reopen(t, path, kek)
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "restore the database from a backup") || !strings.Contains(err.Error(), "tokA") {
				t.Fatalf("Open: got %v, want ErrTampered naming tokA", err)
			}
		})
	}
}

// The same edit made with bbolt on the closed file (the brief's scenario, not the store's own
// handle) is refused at start-up.
func TestTokenEditedInClosedFileRefusedAtOpen(t *testing.T) {
	s, path, kek := openStore(t)
	mintAudited(t, s, testToken("tokA", 0))
	s.Close()
	editFile(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		return b.Put([]byte("tokA"), editBody(b.Get([]byte("tokA")), `"expires_at":"2026`, `"expires_at":"2099`))
	})
	if _, err := reopen(t, path, kek); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open: got %v, want ErrTampered", err)
	}
}

// A rotate command edited in the file never reaches a caller (the scheduler reads policies through
// GetCredential/ListCredentials); nor does a policy or limits record moved to another credential.
func TestTamperedPolicyRefused(t *testing.T) {
	credBucket := func(tx *bolt.Tx, name string) *bolt.Bucket {
		return tx.Bucket(bucketCredentials).Bucket([]byte(name))
	}
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
	}{
		{"rotate command edited", func(tx *bolt.Tx) error {
			b := credBucket(tx, "a")
			return b.Put(keyPolicy, editBody(b.Get(keyPolicy), "/usr/local/bin/new-key", "/tmp/attacker/evil-k"))
		}},
		{"policy moved from another credential", func(tx *bolt.Tx) error {
			return credBucket(tx, "a").Put(keyPolicy, bytes.Clone(credBucket(tx, "b").Get(keyPolicy)))
		}},
		{"limits moved from another credential", func(tx *bolt.Tx) error {
			return credBucket(tx, "a").Put(keyLimits, bytes.Clone(credBucket(tx, "b").Get(keyLimits)))
		}},
		{"credit counter reset", func(tx *bolt.Tx) error {
			b := credBucket(tx, "a")
			return b.Put(keyCredits, editBody(b.Get(keyCredits), `"spent":90`, `"spent":0`))
		}},
		{"current version pointer moved back", func(tx *bolt.Tx) error {
			b := credBucket(tx, "a")
			return b.Put(keyCredMeta, editBody(b.Get(keyCredMeta), `"current":2`, `"current":1`))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openStore(t)
			for _, name := range []string{"a", "b"} {
				if _, err := s.PutCredential(name, []byte("k1"), t0); err != nil {
					t.Fatal(err)
				}
				if _, err := s.RotateCredential(name, []byte("k2"), t0); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.SetPolicy("a", Policy{MaxAge: time.Hour, RotateCommand: []string{"/usr/local/bin/new-key"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetPolicy("b", Policy{MaxAge: time.Minute, RotateCommand: []string{"/usr/local/bin/other"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetLimits("a", Limits{MonthlyCredits: 100}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetLimits("b", Limits{MonthlyCredits: 1_000_000}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SpendCredentialCredits("a", time.Now(), 90, 100); err != nil {
				t.Fatal(err)
			}
			checkpoint(t, s)
			if err := s.db.Update(tc.edit); err != nil {
				t.Fatal(err)
			}
			if c, err := s.GetCredential("a"); !errors.Is(err, ErrTampered) {
				t.Fatalf("GetCredential: got %+v %v, want ErrTampered", c.Policy, err)
			}
			if _, err := s.ListCredentials(); !errors.Is(err, ErrTampered) {
				t.Fatalf("ListCredentials: got %v, want ErrTampered", err)
			}
			if v, err := s.VerifyAudit(); err != nil || v.OK {
				t.Fatalf("VerifyAudit: %+v %v", v, err)
			}
			s.Close()
			if _, err := reopen(t, path, kek); !errors.Is(err, ErrTampered) {
				t.Fatalf("Open: got %v, want ErrTampered", err)
			}
		})
	}
}

// A fresh database verifies, and every record a store writes is sealed.
func TestFreshDatabaseVerifies(t *testing.T) {
	s, path, kek := openStore(t)
	if _, err := s.PutCredential("c", []byte("k"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetPolicy("c", Policy{MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendCredentialEvent("c", CredentialEvent{At: t0, Event: "x"}); err != nil {
		t.Fatal(err)
	}
	mintAudited(t, s, testToken("t1", 3))
	if err := s.PutToken(testToken("t2", 0)); err != nil {
		t.Fatal(err)
	}
	r, err := s.CheckIntegrity()
	if err != nil || !r.OK() || r.Records != 6 || r.MaxStamp != 1 {
		t.Fatalf("integrity: %+v %v", r, err)
	}
	s.Close()
	if _, err := reopen(t, path, kek); err != nil {
		t.Fatal(err)
	}
}

// copySchema1Fixture copies the schema-1 database and its master keyset (store/testdata/schema1)
// into a fresh temp dir, so a test may migrate or edit them, and returns that dir.
func copySchema1Fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"broker.db", "master.json"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "schema1", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A database written by the last schema-1 release (store/testdata/schema1, made with the code
// before record MACs) is migrated: every record sealed, and the result verifies and still works.
func TestMigrateSchema1Database(t *testing.T) {
	dir := copySchema1Fixture(t)
	path := filepath.Join(dir, "broker.db")
	editFile(t, path, func(tx *bolt.Tx) error { // the fixture is what it claims to be
		m := tx.Bucket(bucketMeta)
		if string(m.Get(keySchemaVersion)) != "1" || m.Get(keyRecordKeyset) != nil || tx.Bucket(bucketTokens).Get([]byte("tokold1"))[0] != '{' {
			t.Fatal("fixture is not a schema-1 database")
		}
		return nil
	})
	kek, err := LoadMasterKeyset(filepath.Join(dir, "master.json"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := reopen(t, path, kek)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.CheckIntegrity()
	if err != nil || !r.OK() || r.Records < 8 || r.MaxStamp != 0 {
		t.Fatalf("integrity after migration: %+v %v", r, err)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 2 {
		t.Fatalf("VerifyAudit after migration: %+v %v", v, err)
	}
	c, err := s.GetCredential("scavio_api_key")
	if err != nil || c.Version != 2 || c.Policy == nil || c.Policy.RotateCommand[0] != "/usr/local/bin/rotate-scavio" || c.Limits == nil {
		t.Fatalf("credential: %+v %v", c, err)
	}
	if v, _, err := s.LoadCredential("scavio_api_key"); err != nil || string(v) != "sk_old_two" {
		t.Fatalf("value: %q %v", v, err)
	}
	if tk, err := s.UseToken("tokold1", t0); err != nil || tk.Uses != 2 {
		t.Fatalf("token: %+v %v", tk, err)
	}
	if evs, err := s.CredentialEvents("scavio_api_key"); err != nil || len(evs) != 1 {
		t.Fatalf("events: %v %v", evs, err)
	}
	// From now on the records are checked: the same edit as above is refused.
	checkpoint(t, s)
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials).Bucket([]byte("scavio_api_key"))
		return b.Put(keyPolicy, editBody(b.Get(keyPolicy), "rotate-scavio", "rotate-evilio"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCredential("scavio_api_key"); !errors.Is(err, ErrTampered) {
		t.Fatalf("edited after migration: %v", err)
	}
}

// Putting back an older (validly MACed) audit chain head, with the newest records removed, is
// detected: the tokens minted after it carry a later audit seq. Start-up refuses and VerifyAudit
// reports it; so does an old head put back without removing the records.
func TestRolledBackAuditHeadDetected(t *testing.T) {
	for _, dropRecords := range []bool{true, false} {
		t.Run(map[bool]string{true: "records dropped", false: "records kept"}[dropRecords], func(t *testing.T) {
			s, path, kek := openStore(t)
			mintAudited(t, s, testToken("early", 0))
			if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "search", Code: "OK"}); err != nil {
				t.Fatal(err)
			}
			var oldHead []byte // a snapshot of the head as a backup would hold it
			checkpoint(t, s)
			s.db.View(func(tx *bolt.Tx) error {
				oldHead = bytes.Clone(tx.Bucket(bucketMeta).Get(keyAuditHead))
				return nil
			})
			mintAudited(t, s, testToken("late", 0)) // audit record 3
			if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "search", Code: "OK"}); err != nil {
				t.Fatal(err)
			}
			if v, err := s.VerifyAudit(); err != nil || !v.OK {
				t.Fatalf("before: %+v %v", v, err)
			}
			rollBack := func(tx *bolt.Tx) error {
				if dropRecords {
					for seq := uint64(3); seq <= 4; seq++ {
						if err := tx.Bucket(bucketAudit).Delete(auditKey(seq)); err != nil {
							return err
						}
					}
				}
				return tx.Bucket(bucketMeta).Put(keyAuditHead, oldHead)
			}
			checkpoint(t, s)
			if err := s.db.Update(rollBack); err != nil {
				t.Fatal(err)
			}
			v, err := s.VerifyAudit()
			if err != nil || v.OK || (dropRecords && v.BadSeq != 3) {
				t.Fatalf("VerifyAudit after the head was put back: %+v %v", v, err)
			}
			if dropRecords && !strings.Contains(v.Problem, `"late" was written at audit record 3`) {
				t.Fatalf("problem does not name the newer state: %s", v.Problem)
			}
			s.Close()
			_, err = reopen(t, path, kek)
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "older than") {
				t.Fatalf("Open: got %v, want ErrTampered (head older than the state)", err)
			}
		})
	}
}

// The record keyset is one of the keysets wrapped under the master keyset, so Rewrap moves it
// with the others (TestRotateMasterKeysetAndRewrap then opens the database with the new master
// key alone, which fails if any keyset stayed under the old one).
func TestRecordKeysetIsWrapped(t *testing.T) {
	s, _, kek := openStore(t)
	u, err := s.Keys()
	if err != nil || len(u.wrapped) != 3 || !u.OpensWith(kek) {
		t.Fatalf("keys: %d wrapped keysets %v, want data, audit and record", len(u.wrapped), err)
	}
}

// A policy or limits record removed, or put back to its own earlier (validly MACed) value, is
// caught: the credential's meta record binds the current ones.
func TestPolicyAndLimitsBoundToCredential(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		drop bool // remove it, instead of putting back the earlier value
	}{
		{"policy removed", keyPolicy, true},
		{"earlier rotate command put back", keyPolicy, false},
		{"limits removed", keyLimits, true},
		{"earlier, higher ceiling put back", keyLimits, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openStore(t)
			if _, err := s.PutCredential("a", []byte("k1"), t0); err != nil {
				t.Fatal(err)
			}
			earlier := map[string][]byte{}
			snapshot := func() {
				checkpoint(t, s)
				s.db.View(func(tx *bolt.Tx) error {
					b := tx.Bucket(bucketCredentials).Bucket([]byte("a"))
					earlier[string(keyPolicy)] = bytes.Clone(b.Get(keyPolicy))
					earlier[string(keyLimits)] = bytes.Clone(b.Get(keyLimits))
					return nil
				})
			}
			if _, err := s.SetPolicy("a", Policy{MaxAge: time.Hour, RotateCommand: []string{"/usr/local/bin/old-key"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetLimits("a", Limits{MonthlyCredits: 1_000_000}); err != nil {
				t.Fatal(err)
			}
			snapshot()
			if _, err := s.SetPolicy("a", Policy{MaxAge: time.Hour, RotateCommand: []string{"/usr/local/bin/new-key"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetLimits("a", Limits{MonthlyCredits: 100}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.RotateCredential("a", []byte("k2"), t0); err != nil { // rewrites meta: bindings kept
				t.Fatal(err)
			}
			if c, err := s.GetCredential("a"); err != nil || c.Policy.RotateCommand[0] != "/usr/local/bin/new-key" || c.Limits.MonthlyCredits != 100 {
				t.Fatalf("before: %+v %v", c, err)
			}
			checkpoint(t, s)
			if err := s.db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketCredentials).Bucket([]byte("a"))
				if tc.drop {
					return b.Delete(tc.key)
				}
				return b.Put(tc.key, earlier[string(tc.key)])
			}); err != nil {
				t.Fatal(err)
			}
			if c, err := s.GetCredential("a"); !errors.Is(err, ErrTampered) {
				t.Fatalf("GetCredential: got %+v %+v %v, want ErrTampered", c.Policy, c.Limits, err)
			}
			s.Close()
			if _, err := reopen(t, path, kek); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "binds") {
				t.Fatalf("Open: got %v, want ErrTampered", err)
			}
		})
	}
}

// The start-up check verifies records in chunks on every core (verifyAll) and folds them in file
// order: over several chunks, every record is counted, and forged ones in different chunks and
// different goroutines' parts are all reported, in file order.
func TestIntegrityCheckAcrossChunks(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // several goroutines' parts even on one CPU
	kek, _ := newKEK(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 2*verifyChunk + 100
	for i := range n {
		if err := s.PutToken(testToken(fmt.Sprintf("tok%05d", i), 5)); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := s.CheckIntegrity(); err != nil || !r.OK() || r.Records != n {
		t.Fatalf("before: %+v %v", r, err)
	}
	// Written under the open store, as someone with write access to the file could.
	forged := []string{"tok00003", fmt.Sprintf("tok%05d", verifyChunk-5), fmt.Sprintf("tok%05d", n-1)}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		for _, id := range forged {
			if err := b.Put([]byte(id), editBody(b.Get([]byte(id)), `"max_uses":5`, `"max_uses":9`)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, err := s.CheckIntegrity()
	if err != nil {
		t.Fatal(err)
	}
	if r.Records != n {
		t.Errorf("checked %d records, want %d", r.Records, n)
	}
	if len(r.Problems) != len(forged) {
		t.Fatalf("problems %q, want one for each of %q", r.Problems, forged)
	}
	for i, id := range forged {
		if !strings.Contains(r.Problems[i], fmt.Sprintf("%q does not verify", id)) {
			t.Errorf("problem %d is %q, want %s (file order)", i, r.Problems[i], id)
		}
	}
}
