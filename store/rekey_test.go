package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"
)

// fillStore stores creds credentials with versions versions each; the value of name/v is
// "value-<name>-<v>".
func fillStore(t *testing.T, s *Store, creds, versions int) map[string]map[uint64]string {
	t.Helper()
	want := map[string]map[uint64]string{}
	for i := range creds {
		name := fmt.Sprintf("cred%d", i)
		want[name] = map[uint64]string{}
		for v := 1; v <= versions; v++ {
			val := fmt.Sprintf("value-%s-%d", name, v)
			var err error
			if v == 1 {
				_, err = s.PutCredential(name, []byte(val), t0)
			} else {
				_, err = s.RotateCredential(name, []byte(val), t0)
			}
			if err != nil {
				t.Fatal(err)
			}
			want[name][uint64(v)] = val
		}
	}
	return want
}

func checkValues(t *testing.T, s *Store, want map[string]map[uint64]string) {
	t.Helper()
	for name, vs := range want {
		for v, val := range vs {
			mustValue(t, s, name, v, val)
		}
	}
}

func TestRekey(t *testing.T) {
	s, path, kek := openStore(t)
	want := fillStore(t, s, 3, 3)
	before, err := s.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(before.DataKeyIDs) != 1 || before.VersionsByKey[before.DataPrimaryKeyID] != 9 || len(before.MasterKeyIDs) != 1 {
		t.Fatalf("before: %+v", before)
	}
	res, err := s.Rekey()
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || res.Reencrypted != 9 || res.Total != 9 || res.NewPrimaryKeyID == before.DataPrimaryKeyID ||
		!slices.Equal(res.RemovedKeyIDs, before.DataKeyIDs) {
		t.Fatalf("rekey: %+v (before %+v)", res, before)
	}
	after, _ := s.Keys()
	if after.DataPrimaryKeyID != res.NewPrimaryKeyID || !slices.Equal(after.DataKeyIDs, []uint32{res.NewPrimaryKeyID}) ||
		after.VersionsByKey[res.NewPrimaryKeyID] != 9 || len(after.VersionsByKey) != 1 || after.RekeyTarget != 0 {
		t.Fatalf("after: %+v", after)
	}
	checkValues(t, s, want)
	// New versions use the new key; everything survives a reopen with the same master keyset.
	if _, err := s.RotateCredential("cred0", []byte("value-cred0-4"), t0); err != nil {
		t.Fatal(err)
	}
	want["cred0"][4] = "value-cred0-4"
	delete(want["cred0"], 1) // pruned (KeepVersions 3)
	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	checkValues(t, s2, want)
	u, _ := s2.Keys()
	if len(u.VersionsByKey) != 1 || u.VersionsByKey[res.NewPrimaryKeyID] != 9 {
		t.Fatalf("after reopen: %+v", u)
	}
}

var errStop = errors.New("stopped by test")

// A rekey stopped midway (each re-encrypted version is its own commit) leaves a database that opens
// and serves every value; the next Rekey finishes the same rotation instead of adding a key.
func TestRekeyResumesAfterStop(t *testing.T) {
	for _, stopAfter := range []int{1, 4, 9} {
		t.Run(strconv.Itoa(stopAfter), func(t *testing.T) {
			s, path, kek := openStore(t)
			want := fillStore(t, s, 3, 3)
			_, err := s.rekey(func(done int) error {
				if done == stopAfter {
					return errStop
				}
				return nil
			})
			if !errors.Is(err, errStop) {
				t.Fatalf("rekey: %v", err)
			}
			s.Close()
			s2, err := Open(path, kek, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			checkValues(t, s2, want)
			mid, _ := s2.Keys()
			if mid.RekeyTarget == 0 || mid.DataPrimaryKeyID != mid.RekeyTarget || len(mid.DataKeyIDs) != 2 ||
				mid.VersionsByKey[mid.RekeyTarget] != stopAfter {
				t.Fatalf("midway: %+v", mid)
			}
			res, err := s2.Rekey()
			if err != nil {
				t.Fatal(err)
			}
			if !res.Resumed || res.NewPrimaryKeyID != mid.RekeyTarget || res.Reencrypted != 9-stopAfter || len(res.RemovedKeyIDs) != 1 {
				t.Fatalf("resume: %+v", res)
			}
			checkValues(t, s2, want)
			after, _ := s2.Keys()
			if after.RekeyTarget != 0 || len(after.DataKeyIDs) != 1 || after.VersionsByKey[res.NewPrimaryKeyID] != 9 {
				t.Fatalf("after: %+v", after)
			}
		})
	}
}

// Calls reading credentials during a rekey never fail.
func TestRekeyConcurrentReads(t *testing.T) {
	s, _, _ := openStore(t)
	want := fillStore(t, s, 4, 3)
	var (
		stop  atomic.Bool
		wg    sync.WaitGroup
		fails atomic.Int64
	)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("cred%d", i)
			for !stop.Load() {
				v, ver, err := s.LoadCredential(name)
				if err != nil || string(v) != want[name][ver] {
					fails.Add(1)
				}
			}
		}()
	}
	for range 3 {
		if _, err := s.Rekey(); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := fails.Load(); n != 0 {
		t.Fatalf("%d reads failed during rekey", n)
	}
}

// The crash test proper: a child process runs Rekey on a real database file and SIGKILLs itself
// after a few versions; the parent reopens the file and finishes the rekey. Nothing is lost.
func TestRekeyKill9Midway(t *testing.T) {
	if os.Getenv("CREDBROKER_REKEY_CHILD_DB") != "" {
		rekeyChild()
		return
	}
	dir := t.TempDir()
	kpath := filepath.Join(dir, "master.json")
	if err := NewMasterKeyset(kpath); err != nil {
		t.Fatal(err)
	}
	kek, err := LoadMasterKeyset(kpath)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "broker.db")
	s, err := Open(dbPath, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := fillStore(t, s, 4, 3)
	s.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestRekeyKill9Midway$")
	cmd.Env = append(os.Environ(), "CREDBROKER_REKEY_CHILD_DB="+dbPath, "CREDBROKER_REKEY_CHILD_KEYSET="+kpath, "CREDBROKER_REKEY_CHILD_AFTER=5")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed: %v\n%s", err, out)
	}

	s, err = Open(dbPath, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkValues(t, s, want)
	mid, _ := s.Keys()
	if mid.RekeyTarget == 0 || mid.VersionsByKey[mid.RekeyTarget] != 5 {
		t.Fatalf("after kill -9: %+v", mid)
	}
	res, err := s.Rekey()
	if err != nil || !res.Resumed || res.Reencrypted != 7 {
		t.Fatalf("resume: %+v %v", res, err)
	}
	checkValues(t, s, want)
}

func rekeyChild() {
	kek, err := LoadMasterKeyset(os.Getenv("CREDBROKER_REKEY_CHILD_KEYSET"))
	if err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	s, err := Open(os.Getenv("CREDBROKER_REKEY_CHILD_DB"), kek, Options{})
	if err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	after, _ := strconv.Atoi(os.Getenv("CREDBROKER_REKEY_CHILD_AFTER"))
	s.rekey(func(done int) error {
		if done == after {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	})
	os.Exit(4) // not reached
}

func TestInspectKeysAndPruneMasterKeyset(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, prunedPath := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json"), filepath.Join(dir, "pruned.json")
	dbPath := filepath.Join(dir, "broker.db")
	if err := NewMasterKeyset(oldPath); err != nil {
		t.Fatal(err)
	}
	oldKEK, _ := LoadMasterKeyset(oldPath)
	oldID, _ := PrimaryKeyID(oldKEK)
	s, err := Open(dbPath, oldKEK, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := fillStore(t, s, 1, 2)
	if _, err := InspectKeys(dbPath); !errors.Is(err, ErrLocked) {
		t.Fatalf("inspect an open database: %v, want ErrLocked", err)
	}
	s.Close()

	newID, err := RotateMasterKeyset(oldPath, newPath)
	if err != nil {
		t.Fatal(err)
	}
	u, err := InspectKeys(dbPath)
	if err != nil || !slices.Equal(u.MasterKeyIDs, []uint32{oldID}) {
		t.Fatalf("inspect before re-wrap: %+v %v", u, err)
	}
	opensWith := func(u KeyUsage) func(tink.AEAD) error {
		return func(a tink.AEAD) error {
			if !u.OpensWith(a) {
				return errors.New("pruned keyset would not open the database")
			}
			return nil
		}
	}
	if _, err := PruneMasterKeyset(newPath, prunedPath, u.MasterKeyIDs, opensWith(u)); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("prune before re-wrap: %v, want ErrKeyInUse", err)
	}

	newKEK, _ := LoadMasterKeyset(newPath)
	s, err = Open(dbPath, newKEK, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before, rewrapped, err := s.RewrapIfNeeded(newKEK)
	if err != nil || !rewrapped || !slices.Equal(before, []uint32{oldID}) {
		t.Fatalf("rewrap on open: %v %v %v", before, rewrapped, err)
	}
	if _, rewrapped, err := s.RewrapIfNeeded(newKEK); err != nil || rewrapped {
		t.Fatalf("second rewrap: %v %v", rewrapped, err)
	}
	// Rekey after a re-wrap uses the keyset the store now holds.
	if _, err := s.Rekey(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	u, _ = InspectKeys(dbPath)
	if !slices.Equal(u.MasterKeyIDs, []uint32{newID}) {
		t.Fatalf("after re-wrap: %+v", u)
	}
	otherPath := filepath.Join(dir, "other.json")
	NewMasterKeyset(otherPath)
	if _, err := PruneMasterKeyset(otherPath, prunedPath, u.MasterKeyIDs, nil); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("prune an unrelated keyset: %v", err)
	}
	removed, err := PruneMasterKeyset(newPath, prunedPath, u.MasterKeyIDs, opensWith(u))
	if err != nil || !slices.Equal(removed, []uint32{oldID}) {
		t.Fatalf("prune: %v %v", removed, err)
	}
	if _, err := PruneMasterKeyset(newPath, prunedPath, u.MasterKeyIDs, nil); err == nil {
		t.Fatal("prune overwrote its output")
	}
	if _, err := PruneMasterKeyset(prunedPath, filepath.Join(dir, "again.json"), u.MasterKeyIDs, nil); err == nil {
		t.Fatal("pruning a single-key keyset succeeded")
	}
	prunedKEK, _ := LoadMasterKeyset(prunedPath)
	s, err = Open(dbPath, prunedKEK, Options{})
	if err != nil {
		t.Fatalf("the pruned keyset does not open the database: %v", err)
	}
	defer s.Close()
	checkValues(t, s, want)
}
