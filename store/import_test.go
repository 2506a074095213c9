package store

import (
	"errors"
	"fmt"
	"testing"
)

// CreateCredentials is all or nothing: a failure at any entry leaves no credential of the batch
// behind, and a full batch is stored with its history events in one commit.
func TestCreateCredentialsAllOrNothing(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.CreateCredential("taken", []byte("old"), VersionMeta{At: t0}); err != nil {
		t.Fatal(err)
	}
	meta := VersionMeta{At: t0, How: HowImport}
	entries := func(names ...string) []NewCredential {
		var out []NewCredential
		for _, n := range names {
			out = append(out, NewCredential{Name: n, Value: []byte("v-" + n), Event: &CredentialEvent{At: t0, Event: "import", Version: 1}})
		}
		return out
	}
	many := make([]string, 0, 2000)
	for i := range 2000 {
		many = append(many, fmt.Sprintf("bulk_%04d", i))
	}
	for _, tc := range []struct {
		name  string
		names []string
	}{
		{"taken name last", append(append([]string{}, many...), "taken")},
		{"taken name midway", []string{"a", "b", "taken", "c"}},
		{"repeated name", []string{"a", "b", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.LastTxID()
			_, err := s.CreateCredentials(entries(tc.names...), meta)
			if !errors.Is(err, ErrExists) {
				t.Fatalf("CreateCredentials = %v, want ErrExists", err)
			}
			creds, err := s.ListCredentials()
			if err != nil {
				t.Fatal(err)
			}
			if len(creds) != 1 || creds[0].Name != "taken" {
				t.Fatalf("after a failed import the store holds %d credentials, want only the one stored before", len(creds))
			}
			if s.LastTxID() != before {
				t.Errorf("a failed import committed a transaction")
			}
			mustValue(t, s, "taken", 1, "old")
		})
	}

	before := s.LastTxID()
	got, err := s.CreateCredentials(entries(many...), meta)
	if err != nil || len(got) != len(many) {
		t.Fatalf("CreateCredentials(%d) = %d, %v", len(many), len(got), err)
	}
	if n := s.LastTxID() - before; n != 1 {
		t.Errorf("%d commits for one import, want 1", n)
	}
	mustValue(t, s, "bulk_1999", 1, "v-bulk_1999")
	if h := historySummary(t, s, "bulk_0000"); h != "v1:current:import" {
		t.Errorf("history %s", h)
	}
	if evs, err := s.CredentialEvents("bulk_0007"); err != nil || len(evs) != 1 || evs[0].Event != "import" {
		t.Errorf("events %v %v", evs, err)
	}
}
