package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func newKEK(t testing.TB) (tink.AEAD, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "master.json")
	if err := NewMasterKeyset(path); err != nil {
		t.Fatal(err)
	}
	kek, err := LoadMasterKeyset(path)
	if err != nil {
		t.Fatal(err)
	}
	return kek, path
}

func openStore(t *testing.T) (*Store, string, tink.AEAD) {
	t.Helper()
	kek, _ := newKEK(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path, kek
}

func TestCredentialRoundTripAndRotation(t *testing.T) {
	s, path, kek := openStore(t)
	c, err := s.PutCredential("scavio_api_key", []byte("sk_test_one"), t0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != 1 || !c.CreatedAt.Equal(t0) {
		t.Fatalf("put: got %+v", c)
	}
	if _, err := s.PutCredential("scavio_api_key", []byte("x"), t0); !errors.Is(err, ErrExists) {
		t.Fatalf("second put: got %v, want ErrExists", err)
	}
	if _, err := s.RotateCredential("missing", []byte("x"), t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate missing: got %v, want ErrNotFound", err)
	}
	for i := 2; i <= 5; i++ {
		c, err = s.RotateCredential("scavio_api_key", fmt.Appendf(nil, "sk_test_%d", i), t0.Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if c.Version != uint64(i) {
			t.Fatalf("rotate %d: version %d", i, c.Version)
		}
	}
	v, ver, err := s.LoadCredential("scavio_api_key")
	if err != nil || string(v) != "sk_test_5" || ver != 5 {
		t.Fatalf("load: %q v%d %v", v, ver, err)
	}
	// Only KeepVersions (3) versions stay.
	s.db.View(func(tx *bolt.Tx) error {
		n := tx.Bucket(bucketCredentials).Bucket([]byte("scavio_api_key")).Bucket(bucketVersions).Stats().KeyN
		if n != 3 {
			t.Errorf("versions kept: %d, want 3", n)
		}
		return nil
	})

	// Survives a reopen with the same master keyset.
	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if v, _, err := s2.LoadCredential("scavio_api_key"); err != nil || string(v) != "sk_test_5" {
		t.Fatalf("after reopen: %q %v", v, err)
	}
	list, err := s2.ListCredentials()
	if err != nil || len(list) != 1 || list[0].Version != 5 || !list[0].CreatedAt.Equal(t0) {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := s2.DeleteCredential("scavio_api_key"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s2.LoadCredential("scavio_api_key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("load deleted: %v", err)
	}
	if err := s2.DeleteCredential("scavio_api_key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// A version record copied into another credential's slot is refused: its MAC names the slot
// (ErrTampered), and were it re-sealed for the new slot, its ciphertext still would not decrypt
// because the AEAD's associated data names the slot too (ErrCorrupt).
func TestCiphertextSwapFails(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.PutCredential("a", []byte("secret-a"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutCredential("b", []byte("secret-b"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateCredential("a", []byte("secret-a2"), t0); err != nil {
		t.Fatal(err)
	}
	copyVersion := func(fromName string, fromV uint64, toName string, toV uint64, reseal bool) {
		t.Helper()
		if err := s.db.Update(func(tx *bolt.Tx) error {
			root := tx.Bucket(bucketCredentials)
			raw := bytes.Clone(root.Bucket([]byte(fromName)).Bucket(bucketVersions).Get(versionKey(fromV)))
			if reseal {
				body, _, err := s.openSealed(versionsSlot(fromName), versionKey(fromV), raw)
				if err != nil {
					return err
				}
				if raw, err = s.seal(versionsSlot(toName), versionKey(toV), body); err != nil {
					return err
				}
			}
			return root.Bucket([]byte(toName)).Bucket(bucketVersions).Put(versionKey(toV), raw)
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		reseal bool
		want   error
	}{{true, ErrCorrupt}, {false, ErrTampered}} {
		copyVersion("a", 2, "b", 1, tc.reseal) // another name
		if _, _, err := s.LoadCredential("b"); !errors.Is(err, tc.want) {
			t.Fatalf("swapped name (reseal %v): got %v, want %v", tc.reseal, err, tc.want)
		}
		copyVersion("a", 1, "a", 2, tc.reseal) // another version of the same name (a rollback attack)
		if _, _, err := s.LoadCredential("a"); !errors.Is(err, tc.want) {
			t.Fatalf("swapped version (reseal %v): got %v, want %v", tc.reseal, err, tc.want)
		}
	}
}

func TestWrongMasterKeysetRefusedAndFileUnchanged(t *testing.T) {
	s, path, _ := openStore(t)
	if _, err := s.PutCredential("k", []byte("v"), t0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newKEK(t)
	if _, err := Open(path, other, Options{}); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("got %v, want ErrWrongMasterKey", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("a refused open changed the database file")
	}
}

func TestDatabaseNeverHoldsPlaintext(t *testing.T) {
	s, path, _ := openStore(t)
	secret := []byte("sk_live_CANARY_7f3a9c1e5b2d4a6f")
	if _, err := s.PutCredential("scavio_api_key", secret, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateCredential("scavio_api_key", append(bytes.Clone(secret), '2'), t0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte("CANARY")) {
		t.Fatal("database file contains the plaintext credential")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("db mode %#o, want 0600", st.Mode().Perm())
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	_, path, kek := openStore(t)
	start := time.Now()
	_, err := Open(path, kek, Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("got %v, want ErrLocked", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("second open hung instead of failing")
	}
}

func TestMasterKeysetFile(t *testing.T) {
	_, path := newKEK(t)
	if err := NewMasterKeyset(path); err == nil {
		t.Fatal("NewMasterKeyset overwrote an existing keyset")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("keyset mode %#o, want 0600", st.Mode().Perm())
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := LoadMasterKeyset(path)
	if !errors.Is(err, ErrKeysetPermissions) || !bytes.Contains([]byte(err.Error()), []byte("chmod 600")) {
		t.Fatalf("group-readable keyset: got %v", err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(garbage, []byte(`{"primaryKeyId": 1}`), 0o600)
	if _, err := LoadMasterKeyset(garbage); err == nil {
		t.Fatal("garbage keyset accepted")
	}
	if _, err := LoadMasterKeyset(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing keyset accepted")
	}
}

func testToken(id string, maxUses uint64) Token {
	h := sha256.Sum256([]byte("secret-" + id))
	return Token{ID: id, SecretHash: h[:], Tools: []string{"web_search"}, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), MaxUses: maxUses}
}

func TestTokens(t *testing.T) {
	s, _, _ := openStore(t)
	for i := range 25 {
		if err := s.PutToken(testToken(fmt.Sprintf("tok%02d", i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutToken(testToken("tok00", 0)); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate id: %v", err)
	}
	got, err := s.GetToken("tok07")
	if err != nil || got.ID != "tok07" || !got.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.GetToken("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}

	// Paging visits every token once, in order.
	var seen []string
	after := ""
	for pages := 0; ; pages++ {
		page, next, err := s.ListTokens(after, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range page {
			seen = append(seen, tk.ID)
		}
		if next == "" {
			break
		}
		after = next
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 25 || seen[0] != "tok00" || seen[24] != "tok24" {
		t.Fatalf("paged ids: %v", seen)
	}

	r, err := s.RevokeToken("tok03", t0)
	if err != nil || !r.Revoked {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	if r2, _ := s.RevokeToken("tok03", t0.Add(time.Hour)); !r2.RevokedAt.Equal(t0) {
		t.Fatal("second revoke moved revoked_at")
	}
	if _, err := s.RevokeToken("nope", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke missing: %v", err)
	}
	live, _, err := s.ListTokens("", 100, func(tk *Token) bool { return tk.Live(t0) })
	if err != nil || len(live) != 24 {
		t.Fatalf("live tokens: %d %v", len(live), err)
	}
}

// Concurrent uses of a limited token never exceed the limit, and the count survives a reopen.
func TestUseTokenLimitConcurrent(t *testing.T) {
	s, path, kek := openStore(t)
	if err := s.PutToken(testToken("limited", 40)); err != nil {
		t.Fatal(err)
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		ok, spent int
	)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UseToken("limited", t0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrExhausted):
				spent++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 40 || spent != 60 {
		t.Fatalf("ok=%d exhausted=%d, want 40/60", ok, spent)
	}
	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	tk, _ := s2.GetToken("limited")
	if tk.Uses != 40 {
		t.Fatalf("uses after reopen: %d", tk.Uses)
	}
	if _, err := s2.UseToken("limited", t0); !errors.Is(err, ErrExhausted) {
		t.Fatalf("use after reopen: %v", err)
	}
	if err := s2.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeTokenRejectsIncomplete(t *testing.T) {
	for _, raw := range []string{`not json`, `{}`, `{"id":"x","secret_sha256":"AAAA"}`, `{"id":"x"}`} {
		if _, err := DecodeToken([]byte(raw)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", raw, err)
		}
	}
	good, _ := json.Marshal(testToken("x", 0))
	if _, err := DecodeToken(good); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeToken(f *testing.F) {
	good, _ := json.Marshal(testToken("x", 3))
	f.Add(good)
	f.Add([]byte(`{"id":"a","secret_sha256":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		tk, err := DecodeToken(raw)
		if err == nil && (tk.ID == "" || len(tk.SecretHash) != 32) {
			t.Fatalf("accepted incomplete record %q", raw)
		}
	})
}

// The current-version cache never serves a version older than the last committed write.
func TestLoadCredentialCacheFollowsWrites(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.PutCredential("k", []byte("one"), t0); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 5; i++ {
		if v, _, err := s.LoadCredential("k"); err != nil || string(v) == fmt.Sprint(i) {
			t.Fatalf("load before rotation %d: %q %v", i, v, err)
		}
		if _, err := s.RotateCredential("k", []byte(fmt.Sprint(i)), t0); err != nil {
			t.Fatal(err)
		}
		if v, ver, err := s.LoadCredential("k"); err != nil || string(v) != fmt.Sprint(i) || ver != uint64(i) {
			t.Fatalf("after rotation %d: %q v%d %v", i, v, ver, err)
		}
	}
	if err := s.DeleteCredential("k"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LoadCredential("k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// The AAD binds a ciphertext to its credential and version; its bytes are in every database, so
// they must never change.
func TestCredentialAAD(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint64
		want    string
	}{
		{"scavio_api_key", 1, "credential/scavio_api_key/1"},
		{"a", 0, "credential/a/0"},
		{"k-2.x", 18446744073709551615, "credential/k-2.x/18446744073709551615"},
	} {
		if got := string(credentialAAD(tc.name, tc.version)); got != tc.want || got != fmt.Sprintf("credential/%s/%d", tc.name, tc.version) {
			t.Errorf("credentialAAD(%q, %d) = %q, want %q", tc.name, tc.version, got, tc.want)
		}
	}
}
