// Command localkms runs the local-kms AWS KMS emulator (github.com/nsmithuk/local-kms, pinned in
// this directory's go.mod) on a loopback address only.
//
// Why a wrapper and not the emulator's own main: local-kms listens on ":"+$PORT, every interface,
// with no way to choose the address. This main wires the emulator's own packages (its database,
// its request handler, its key types) exactly as its src.Run does, but serves them on a listener
// that must be a loopback address, so nothing off the host can reach the keys. It lives in a module
// of its own so that local-kms's dependencies (AWS SDK for Go v1 among them) never enter
// credbroker's go.mod.
//
// Environment (the emulator's own names where it has them):
//
//	LOCAL_KMS_ADDR   listen address, default 127.0.0.1:0; refused unless a loopback IP
//	LOCAL_KMS_READY  if set, a file to which the bound address is written once listening
//	KMS_DATA_PATH    the emulator's leveldb directory (required)
//	KMS_ACCOUNT_ID   default 111122223333
//	KMS_REGION       default eu-west-2
//	KMS_SEED_PATH    optional seed file; only Keys.Symmetric.Aes entries are loaded (keys with
//	                 fixed backing material, e.g. to stand for a key after a rotation)
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/nsmithuk/local-kms/src"
	"github.com/nsmithuk/local-kms/src/cmk"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"
	"gopkg.in/yaml.v2"
)

func main() {
	if err := run(); err != nil {
		log.Fatalf("localkms: %v", err)
	}
}

func run() error {
	addr := envOr("LOCAL_KMS_ADDR", "127.0.0.1:0")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("LOCAL_KMS_ADDR %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("LOCAL_KMS_ADDR %q: the host must be a loopback IP such as 127.0.0.1", addr)
	}
	dataPath := os.Getenv("KMS_DATA_PATH")
	if dataPath == "" {
		return fmt.Errorf("KMS_DATA_PATH is not set (the emulator's default, /tmp/local-kms, is shared by every run)")
	}
	config.AWSAccountId = envOr("KMS_ACCOUNT_ID", "111122223333")
	config.AWSRegion = envOr("KMS_REGION", "eu-west-2")
	if config.DatabasePath, err = filepath.Abs(dataPath); err != nil {
		return err
	}

	database := data.NewDatabase(config.DatabasePath)
	defer database.Close()
	if p := os.Getenv("KMS_SEED_PATH"); p != "" {
		if err := seed(p, database); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if p := os.Getenv("LOCAL_KMS_READY"); p != "" {
		// Written after Listen: a reader that sees the address can connect.
		if err := os.WriteFile(p, []byte(ln.Addr().String()), 0o600); err != nil {
			return err
		}
	}
	log.Printf("localkms: local-kms serving on %s, data in %s", ln.Addr(), config.DatabasePath)
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src.HandleRequest(w, r, database)
	}))
}

// seed loads the symmetric AES keys of a local-kms seed file, skipping keys that already exist
// (as local-kms's own seeding does).
func seed(path string, database *data.Database) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var in struct {
		Keys struct {
			Symmetric struct {
				Aes []cmk.AesKey `yaml:"Aes"`
			} `yaml:"Symmetric"`
		} `yaml:"Keys"`
	}
	if err := yaml.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	for i := range in.Keys.Symmetric.Aes {
		k := &in.Keys.Symmetric.Aes[i]
		if _, err := database.LoadKey(k.GetArn()); err == nil {
			continue
		}
		if err := database.SaveKey(k); err != nil {
			return fmt.Errorf("seed %s: key %s: %w", path, k.GetArn(), err)
		}
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
