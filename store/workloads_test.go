package store

import (
	"errors"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestWorkloadsStoredAndListed(t *testing.T) {
	s, path, kek := openStore(t)
	if list, err := s.ListWorkloads(); err != nil || len(list) != 0 {
		t.Fatalf("fresh database: %v %v", list, err) // no bucket yet: none, not an error
	}
	w := Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{1000}, TTL: time.Hour, CreatedAt: t0}
	if err := s.PutWorkload(w); err != nil {
		t.Fatal(err)
	}
	if err := s.PutWorkload(w); !errors.Is(err, ErrExists) {
		t.Fatalf("second put: %v, want ErrExists", err)
	}
	s.Close()
	s2, err := reopen(t, path, kek) // Open verifies workloads/ with the other sealed buckets
	if err != nil {
		t.Fatal(err)
	}
	list, err := s2.ListWorkloads()
	if err != nil || len(list) != 1 || list[0].Name != "mcp" || list[0].UIDs[0] != 1000 {
		t.Fatalf("after reopen: %+v %v", list, err)
	}
	if err := s2.DeleteWorkload("mcp"); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteWorkload("mcp"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

// A registration widened in the file (another uid admitted) is refused at Open, like a token.
func TestWorkloadEditedInClosedFileRefusedAtOpen(t *testing.T) {
	s, path, kek := openStore(t)
	if err := s.PutWorkload(Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{1000}, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	editFile(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketWorkloads)
		return b.Put([]byte("mcp"), editBody(b.Get([]byte("mcp")), `"uids":[1000]`, `"uids":[1000,1001]`))
	})
	if _, err := reopen(t, path, kek); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open: got %v, want ErrTampered", err)
	}
}
