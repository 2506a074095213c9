package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/credbroker/credbroker/broker/kms/awskms/localkmstest"
)

// awsSeed is one AES key with fixed backing material, so that two emulators can hold the same key
// before and after a rotation (local-kms has no RotateKeyOnDemand; a seeded key whose
// NextKeyRotation is past is rotated on first use).
const (
	awsKeyID = "6c1f3f0e-2d4b-4b1a-9a57-1e0c2b7d9f31"
	awsSeed  = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + awsKeyID + `
        BackingKeys:
          - 0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0
`
)

// brokerd with its KEK in AWS KMS (the local-kms emulator, a real process on loopback, driven
// through the AWS SDK v2): put, search, restart, search; the KMS key rotates and `keyset rewrap`
// moves the wrapping to the new backing key (the emulator without the rotation can no longer open
// the database); a KMS outage after start does not stop serving; `keyset migrate` moves the live
// database to a keyset file and back.
func TestKMSAWSLocalKMS(t *testing.T) {
	before := localkmstest.Start(t, localkmstest.Options{Seed: awsSeed})
	uri := localkmstest.KeyURI("arn:aws:kms:" + localkmstest.Region + ":" + localkmstest.AccountID + ":key/" + awsKeyID)
	k := &kmsEnv{env: newEnv(t), uri: uri}
	// One attempt per KMS call: an outage fails at once instead of after the SDK's backoff.
	useKMS := func(s *localkmstest.Server) { k.vaultEn = append(s.Env(), "AWS_MAX_ATTEMPTS=1") }
	useKMS(before)

	k.start(t, "--master-key-uri", uri)
	token, _ := k.setup(t)
	k.search(t, token, "under aws kms").ok(t)
	if mk := k.masterKey(t); mk.Source != uri || mk.LastKMSContact == "" {
		t.Fatalf("status master key: %+v, want source %s and a last contact", mk, uri)
	}
	restart := func() {
		t.Helper()
		if err := k.stop(t, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		k.start(t, "--master-key-uri", uri)
	}
	restart()
	k.search(t, token, "after a restart").ok(t)

	// The key rotates: the same key with a new backing key, on another emulator (the SDK reaches
	// whichever the environment names). The old wrapping still opens; `keyset rewrap` re-encrypts
	// it under the new backing key, which the un-rotated emulator lacks.
	if err := k.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	before.Stop()
	rotated := localkmstest.Start(t, localkmstest.Options{Seed: awsSeed + "        NextKeyRotation: 2001-01-01T00:00:00Z\n"})
	useKMS(rotated)
	k.start(t, "--master-key-uri", uri)
	k.search(t, token, "after the rotation").ok(t)
	if out := k.ctl(t, "", "keyset", "rewrap").ok(t).stdout; !strings.Contains(out, "re-wrapped under the current key material of "+uri) {
		t.Fatalf("keyset rewrap: %s", out)
	}
	if err := k.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	before.Restart(t)
	useKMS(before)
	if out := k.refused(t, "--master-key-uri", uri); !strings.Contains(out, uri) || !strings.Contains(out, "the KMS refused to decrypt") {
		t.Fatalf("the un-rotated key opened a database re-wrapped after the rotation, or the error does not name the key: %s", out)
	} else {
		t.Logf("un-rotated key refused: %s", lastLine(out))
	}
	useKMS(rotated)
	k.start(t, "--master-key-uri", uri)
	k.search(t, token, "re-wrapped").ok(t)

	// Outage after start: serving goes on; a re-wrap is refused, naming the KMS.
	rotated.Stop()
	k.search(t, token, "kms down").ok(t)
	k.ctl(t, "", "keyset", "rewrap").fails(t, "KMS")
	rotated.Restart(t)

	// Live migration to a keyset file and back to the KMS key.
	file := filepath.Join(k.dir, "migrated-keyset.json")
	k.ctl(t, "", "keyset", "new", "--out", file).ok(t)
	k.ctl(t, "", "keyset", "migrate", "--to", file).ok(t)
	k.search(t, token, "under the file").ok(t)
	if mk := k.masterKey(t); mk.Source != "file "+file {
		t.Fatalf("after migrating to the file: %+v", mk)
	}
	k.ctl(t, "", "keyset", "migrate", "--to", uri).ok(t)
	k.search(t, token, "back under aws kms").ok(t)
	restart()
	k.search(t, token, "restarted under aws kms").ok(t)
	if out, err := os.ReadFile(k.db); err != nil || strings.Contains(string(out), itKey) {
		t.Fatalf("the database holds the key in the clear (or cannot be read: %v)", err)
	}
	k.assertNoLeak(t, itKey, "local-kms-test-not-a-secret")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
