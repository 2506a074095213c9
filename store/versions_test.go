package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func uidPtr(u uint32) *uint32 { return &u }

// historySummary renders History as "v1:previous:import v2:current:manual:verified ..." for
// compact comparisons.
func historySummary(t *testing.T, s *Store, name string) string {
	t.Helper()
	_, vs, err := s.History(name)
	if err != nil {
		t.Fatal(err)
	}
	out := ""
	for _, v := range vs {
		if out != "" {
			out += " "
		}
		out += fmt.Sprintf("v%d:%s:%s", v.Version, v.State, v.How)
		if v.Verified {
			out += ":verified"
		}
		if v.From != 0 {
			out += fmt.Sprintf(":from%d", v.From)
		}
	}
	return out
}

func mustValue(t *testing.T, s *Store, name string, v uint64, want string) {
	t.Helper()
	got, err := s.LoadCredentialVersion(name, v)
	if err != nil || string(got) != want {
		t.Fatalf("%s v%d: %q %v, want %q", name, v, got, err, want)
	}
}

func TestVersionLifecycle(t *testing.T) {
	s, _, _ := openStore(t)
	const name = "scavio_api_key"
	c, err := s.CreateCredential(name, []byte("k1"), VersionMeta{At: t0, ByUID: uidPtr(1000), How: HowImport})
	if err != nil || c.Version != 1 || c.Previous != 0 {
		t.Fatalf("create: %+v %v", c, err)
	}
	steps := []struct {
		name        string
		do          func() error
		wantCurrent uint64
		wantHistory string
	}{
		{"rotate", func() error {
			_, err := s.AddVersion(name, []byte("k2"), VersionMeta{At: t0.Add(time.Hour), How: HowManual})
			return err
		}, 2, "v1:previous:import v2:current:manual"},
		{"stage", func() error {
			v, err := s.StageVersion(name, []byte("k3"), VersionMeta{At: t0.Add(2 * time.Hour), How: HowScheduled})
			if err == nil && v != 3 {
				err = fmt.Errorf("staged v%d, want 3", v)
			}
			return err
		}, 2, "v1:previous:import v2:current:manual v3:pending:scheduled"},
		{"promote verified", func() error {
			c, err := s.PromoteVersion(name, 3, true, t0.Add(3*time.Hour))
			if err == nil && (c.Version != 3 || c.Previous != 2 || !c.RotatedAt.Equal(t0.Add(3*time.Hour))) {
				err = fmt.Errorf("promoted: %+v", c)
			}
			return err
		}, 3, "v1:previous:import v2:previous:manual v3:current:scheduled:verified"},
		{"stage and discard", func() error {
			v, err := s.StageVersion(name, []byte("bad"), VersionMeta{At: t0})
			if err != nil {
				return err
			}
			return s.DiscardVersion(name, v)
		}, 3, "v1:previous:import v2:previous:manual v3:current:scheduled:verified"},
		{"rotate after discard skips the discarded number; oldest pruned", func() error {
			_, err := s.AddVersion(name, []byte("k5"), VersionMeta{At: t0.Add(5 * time.Hour)})
			return err
		}, 5, "v2:previous:manual v3:previous:scheduled:verified v5:current:manual"},
		{"pending does not count towards KeepVersions", func() error {
			_, err := s.StageVersion(name, []byte("k6"), VersionMeta{At: t0})
			return err
		}, 5, "v2:previous:manual v3:previous:scheduled:verified v5:current:manual v6:pending:manual"},
		{"a committed rotation supersedes the pending version", func() error {
			_, err := s.AddVersion(name, []byte("k7"), VersionMeta{At: t0.Add(7 * time.Hour)})
			return err
		}, 7, "v3:previous:scheduled:verified v5:previous:manual v7:current:manual"},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if v, ver, err := s.LoadCredential(name); err != nil || ver != st.wantCurrent {
			t.Fatalf("%s: current v%d (%q) %v, want v%d", st.name, ver, v, err, st.wantCurrent)
		}
		if got := historySummary(t, s, name); got != st.wantHistory {
			t.Fatalf("%s: history\n got %s\nwant %s", st.name, got, st.wantHistory)
		}
	}
	if _, err := s.PromoteVersion(name, 6, true, t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("promote a superseded pending version: %v, want ErrNotFound", err)
	}
	mustValue(t, s, name, 3, "k3")
	mustValue(t, s, name, 7, "k7")
	c, vs, err := s.History(name)
	if err != nil || c.Previous != 5 {
		t.Fatalf("previous: %+v %v", c, err)
	}
	if vs[0].CreatedByUID != nil || vs[0].KeyID == 0 {
		t.Fatalf("v3 metadata: %+v", vs[0])
	}
	if _, _, err := s.History("missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("history of a missing credential: %v", err)
	}
}

func TestCreatedByUIDKept(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.CreateCredential("a", []byte("x"), VersionMeta{At: t0, ByUID: uidPtr(0), How: HowImport}); err != nil {
		t.Fatal(err)
	}
	_, vs, _ := s.History("a")
	if vs[0].CreatedByUID == nil || *vs[0].CreatedByUID != 0 || vs[0].How != HowImport {
		t.Fatalf("uid 0 (root) must be kept, not dropped as empty: %+v", vs[0])
	}
}

func TestRollback(t *testing.T) {
	tests := []struct {
		name      string
		to        uint64
		wantErr   error
		wantValue string
		wantFrom  uint64
	}{
		{name: "default is the previous version", to: 0, wantValue: "k3", wantFrom: 3},
		{name: "explicit older version", to: 2, wantValue: "k2", wantFrom: 2},
		{name: "the current version", to: 4, wantErr: ErrNotFound},
		{name: "a pruned version", to: 1, wantErr: ErrNotFound},
		{name: "a version never made", to: 9, wantErr: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := openStore(t)
			if _, err := s.PutCredential("c", []byte("k1"), t0); err != nil {
				t.Fatal(err)
			}
			for i := 2; i <= 4; i++ {
				if _, err := s.RotateCredential("c", fmt.Appendf(nil, "k%d", i), t0); err != nil {
					t.Fatal(err)
				}
			}
			to := tc.to
			if to == 0 {
				c, _ := s.GetCredential("c")
				to = c.Previous
			}
			c, err := s.Rollback("c", to, VersionMeta{At: t0.Add(time.Hour), ByUID: uidPtr(7)})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				if _, v, _ := s.LoadCredential("c"); v != 4 {
					t.Fatalf("a refused rollback changed the current version to %d", v)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Version != 5 || c.Previous != 4 {
				t.Fatalf("after rollback: %+v", c)
			}
			if v, ver, _ := s.LoadCredential("c"); string(v) != tc.wantValue || ver != 5 {
				t.Fatalf("served %q v%d, want %q v5", v, ver, tc.wantValue)
			}
			_, vs, _ := s.History("c")
			last := vs[len(vs)-1]
			if last.How != HowRollback || last.From != tc.wantFrom || *last.CreatedByUID != 7 {
				t.Fatalf("rollback version record: %+v", last)
			}
		})
	}
}

// A database written before versions had how/state/previous/last still reads, and new versions
// continue its numbering.
func TestVersionRecordsFromSchema1Binary(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.PutCredential("old", []byte("k1"), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateCredential("old", []byte("k2"), t0); err != nil {
		t.Fatal(err)
	}
	// Rewrite the records' bodies the way the first release wrote them (sealed, as the schema 2
	// migration leaves them).
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials).Bucket([]byte("old"))
		meta, err := s.seal(credentialSlot("old"), keyCredMeta, fmt.Appendf(nil, `{"current":2,"created_at":%q,"rotated_at":%q}`, t0.Format(time.RFC3339), t0.Format(time.RFC3339)))
		if err != nil {
			return err
		}
		if err := b.Put(keyCredMeta, meta); err != nil {
			return err
		}
		versions := b.Bucket(bucketVersions)
		olds := map[string][]byte{}
		if err := versions.ForEach(func(k, raw []byte) error {
			_, _, body, _ := splitSealed(raw)
			var vrec versionRecord
			json.Unmarshal(body, &vrec)
			old, _ := json.Marshal(struct {
				CreatedAt  time.Time `json:"created_at"`
				Ciphertext []byte    `json:"ciphertext"`
			}{vrec.CreatedAt, vrec.Ciphertext})
			sealed, err := s.seal(versionsSlot("old"), k, old)
			olds[string(k)] = sealed
			return err
		}); err != nil {
			return err
		}
		for k, v := range olds {
			if err := versions.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := historySummary(t, s, "old"), "v1:previous:manual v2:current:manual"; got != want {
		t.Fatalf("history %s, want %s", got, want)
	}
	c, err := s.RotateCredential("old", []byte("k3"), t0)
	if err != nil || c.Version != 3 || c.Previous != 2 {
		t.Fatalf("rotate an old record: %+v %v", c, err)
	}
	mustValue(t, s, "old", 1, "k1")
}

func TestPolicy(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.SetPolicy("missing", Policy{MaxAge: time.Hour}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("policy on a missing credential: %v", err)
	}
	if _, err := s.PutCredential("c", []byte("k"), t0); err != nil {
		t.Fatal(err)
	}
	p := Policy{MaxAge: 30 * 24 * time.Hour, RotateCommand: []string{"/usr/local/bin/new-key", "--project", "x"}, Verify: true}
	c, err := s.SetPolicy("c", p)
	if err != nil || c.Policy == nil || c.Policy.MaxAge != p.MaxAge || len(c.Policy.RotateCommand) != 3 || !c.Policy.Verify {
		t.Fatalf("set: %+v %v", c, err)
	}
	due, ok := c.Policy.NextDue(c.RotatedAt)
	if !ok || !due.Equal(t0.Add(30*24*time.Hour)) {
		t.Fatalf("next due %v %v", due, ok)
	}
	// The policy survives rotations and shows in the list.
	if _, err := s.RotateCredential("c", []byte("k2"), t0); err != nil {
		t.Fatal(err)
	}
	list, _ := s.ListCredentials()
	if len(list) != 1 || list[0].Policy == nil || list[0].Policy.MaxAge != p.MaxAge {
		t.Fatalf("list: %+v", list)
	}
	c, err = s.SetPolicy("c", Policy{})
	if err != nil || c.Policy != nil {
		t.Fatalf("clear: %+v %v", c, err)
	}
	var nilPolicy *Policy
	if _, ok := nilPolicy.NextDue(t0); ok {
		t.Fatal("no policy is never due")
	}
}

func TestCredentialEvents(t *testing.T) {
	s, _, _ := openStore(t)
	if err := s.AppendCredentialEvent("missing", CredentialEvent{Event: "x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("event for a missing credential: %v", err)
	}
	if _, err := s.PutCredential("c", []byte("k"), t0); err != nil {
		t.Fatal(err)
	}
	for i := range MaxCredentialEvents + 5 {
		if err := s.AppendCredentialEvent("c", CredentialEvent{At: t0, Event: "rotate", Version: uint64(i), ByUID: uidPtr(7)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.CredentialEvents("c")
	if err != nil || len(evs) != MaxCredentialEvents || evs[0].Version != 5 || evs[len(evs)-1].Version != MaxCredentialEvents+4 || *evs[0].ByUID != 7 {
		t.Fatalf("events: %d %v", len(evs), err)
	}
	// Deleting the credential deletes its events.
	s.DeleteCredential("c")
	s.PutCredential("c", []byte("k"), t0)
	if evs, _ := s.CredentialEvents("c"); len(evs) != 0 {
		t.Fatalf("events survived a delete: %d", len(evs))
	}
}
