package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// stripSeals replaces every sealed record in the file with its bare body, as a schema-1 database
// stores it: what a forger with write access but no master keyset can do.
func stripSeals(tx *bolt.Tx) error {
	return forEachRecordBucket(tx, func(b *bolt.Bucket, _ slot) error {
		type kv struct{ k, v []byte }
		var todo []kv
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				continue
			}
			if _, _, body, ok := splitSealed(v); ok {
				todo = append(todo, kv{bytes.Clone(k), bytes.Clone(body)})
			}
		}
		for _, e := range todo {
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Putting a record-MAC database's schema version back to 1 (with its records' seals stripped and
// edited, its record keyset removed) would have brokerd run the schema 1 -> 2 migration again,
// which trusts and seals whatever the file holds: a forged token scope, expiry or rotate command
// would come out as genuine. Open refuses it, and also when the audit log was wiped with it.
func TestSchemaPutBackRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(tx *bolt.Tx) error
	}{
		{"audit log kept", func(tx *bolt.Tx) error { return nil }},
		{"audit head and records removed", func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketAudit); err != nil {
				return err
			}
			m := tx.Bucket(bucketMeta)
			if err := m.Delete(keyAuditAnchor); err != nil {
				return err
			}
			return m.Delete(keyAuditHead)
		}},
		{"audit log and its keyset removed", func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketAudit); err != nil {
				return err
			}
			m := tx.Bucket(bucketMeta)
			for _, k := range [][]byte{keyAuditAnchor, keyAuditHead, keyAuditKeyset} {
				if err := m.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openStore(t)
			mintAudited(t, s, testToken("tokA", 0))
			s.Close()
			os.Remove(JournalPath(path)) // checkpointed at Close; a forger zeroes or removes it
			editFile(t, path, func(tx *bolt.Tx) error {
				if err := stripSeals(tx); err != nil {
					return err
				}
				toks := tx.Bucket(bucketTokens)
				forged := bytes.Replace(toks.Get([]byte("tokA")), []byte(`"tools":["web_search"]`), []byte(`"tools":["web_search","google_search"]`), 1)
				if err := toks.Put([]byte("tokA"), forged); err != nil {
					return err
				}
				m := tx.Bucket(bucketMeta)
				if err := m.Delete(keyRecordKeyset); err != nil {
					return err
				}
				if err := m.Put(keySchemaVersion, []byte("1")); err != nil {
					return err
				}
				return tc.edit(tx)
			})
			s2, err := reopen(t, path, kek)
			if err == nil {
				tk, _ := s2.GetToken("tokA")
				t.Fatalf("Open accepted a database whose schema was put back to 1; the forged token has tools %v", tk.Tools)
			}
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "schema") {
				t.Fatalf("Open: got %v, want ErrTampered about the schema", err)
			}
		})
	}
}

// A database migrated from schema 1 is protected from its first start on: its audit head, written
// by the schema-1 brokerd without saying so, is rewritten at Open, so putting the version back
// right after the migration (no audited call since) is refused too.
func TestSchemaPutBackRefusedRightAfterMigration(t *testing.T) {
	dir := copySchema1Fixture(t)
	path := filepath.Join(dir, "broker.db")
	kek, err := LoadMasterKeyset(filepath.Join(dir, "master.json"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	editFile(t, path, func(tx *bolt.Tx) error {
		if err := stripSeals(tx); err != nil {
			return err
		}
		m := tx.Bucket(bucketMeta)
		if err := m.Delete(keyRecordKeyset); err != nil {
			return err
		}
		return m.Put(keySchemaVersion, []byte("1"))
	})
	if _, err := reopen(t, path, kek); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "schema") {
		t.Fatalf("Open: got %v, want ErrTampered about the schema", err)
	}
}
