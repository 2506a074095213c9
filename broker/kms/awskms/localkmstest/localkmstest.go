// Package localkmstest runs the local-kms AWS KMS emulator for tests: a real process on a
// loopback port with its data in a temp dir, a key created through the AWS SDK, and the
// environment that points an AWS SDK client (in this process or in a child such as brokerd) at it.
//
// The emulator is github.com/nsmithuk/local-kms, built from the small main in ./localkms (a module
// of its own, pinned by its go.sum) because local-kms's own main listens on every interface; that
// main serves the same emulator on 127.0.0.1 only, so no network namespace or root is needed and a
// brokerd under test reaches both the emulator and a fake upstream on the host's loopback.
//
// The binary is $CREDBROKER_LOCAL_KMS when set (.ci/run builds it once per run); otherwise it is
// built once into .tools/bin of the repository (about 25-35 s), shared by every test process. When
// the module proxy cannot serve local-kms's modules the test is skipped with the reason.
//
// A brokerd end-to-end test:
//
//	kms := localkmstest.Start(t, localkmstest.Options{})
//	arn := kms.CreateKey(t)
//	cmd := exec.Command(brokerd, "--master-key-uri", localkmstest.KeyURI(arn), …)
//	cmd.Env = append(os.Environ(), kms.Env()...) // AWS_ENDPOINT_URL_KMS, dummy credentials, region
//	…
//	kms.Stop()       // a KMS outage: calls get "connection refused"
//	kms.Restart(t)   // the KMS is back at the same endpoint, with the same keys
package localkmstest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/credbroker/credbroker/broker/logtest"
)

// EnvBinary names the environment variable holding a prebuilt emulator binary.
const EnvBinary = "CREDBROKER_LOCAL_KMS"

// EnvSkip names the environment variable by which .ci/run, having failed to build the emulator,
// tells every test to skip, with its value as the reason.
const EnvSkip = "CREDBROKER_LOCAL_KMS_SKIP"

// Region and AccountID are the emulator's (local-kms defaults, set explicitly so ARNs are known).
const (
	Region    = "eu-west-2"
	AccountID = "111122223333"
)

// Dummy credentials: local-kms does not check signatures, but the SDK will not sign without some.
const (
	accessKeyID     = "AKIALOCALKMSTEST0000"
	secretAccessKey = "local-kms-test-not-a-secret"
)

// Server is one running emulator.
type Server struct {
	// Endpoint is the emulator's base URL, http://127.0.0.1:PORT.
	Endpoint string

	bin     string
	dir     string
	dataDir string
	seed    string // seed file path, or ""
	logs    *logtest.Buffer

	mu   sync.Mutex
	proc *process // the running emulator, nil once stopped
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its stderr is drained
}

// Options tunes Start.
type Options struct {
	// Seed is the text of a local-kms seed file (YAML); only Keys.Symmetric.Aes entries are
	// loaded. A seeded AES key has fixed backing material, and one whose NextKeyRotation is in the
	// past is rotated by the emulator on first use.
	Seed string
}

// Start runs an emulator for the life of t (stopped by t.Cleanup, or earlier by Stop) and returns
// once it answers a real KMS request.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	dir := t.TempDir()
	s := &Server{bin: Binary(t), dir: dir, dataDir: filepath.Join(dir, "data"), logs: &logtest.Buffer{}}
	if opts.Seed != "" {
		s.seed = filepath.Join(dir, "seed.yaml")
		if err := os.WriteFile(s.seed, []byte(opts.Seed), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(s.Stop)
	s.start(t, "127.0.0.1:0")
	return s
}

// Restart starts the emulator again after Stop, on the same address and with the same data (keys
// made before still work), so that a client configured with Endpoint (a running brokerd) sees
// the KMS come back.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t, strings.TrimPrefix(s.Endpoint, "http://"))
}

func (s *Server) start(t testing.TB, addr string) {
	t.Helper()
	env := append(os.Environ(),
		"LOCAL_KMS_ADDR="+addr,
		"KMS_DATA_PATH="+s.dataDir,
		"KMS_REGION="+Region,
		"KMS_ACCOUNT_ID="+AccountID,
	)
	if s.seed != "" {
		env = append(env, "KMS_SEED_PATH="+s.seed)
	}
	p := &process{cmd: exec.Command(s.bin), done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Dir = s.dir
	// Killed with the test binary even when that dies without running its cleanups (go test's
	// timeout), so no emulator outlives its test.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = s.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting local-kms %s: %v", s.bin, err)
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	// The main logs "serving on ADDR" right after Listen: read stderr up to that line (no polling,
	// no sleep), then keep draining it so the emulator never blocks on a full pipe.
	bound := make(chan string, 1)
	go func() {
		defer close(p.done)
		// The exit status of a killed emulator is not news; its log is in s.logs.
		defer func() { _ = p.cmd.Wait() }()
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(s.logs, line)
			if _, a, ok := strings.Cut(line, "local-kms serving on "); ok && !sent {
				bound <- strings.TrimSuffix(strings.Fields(a)[0], ",")
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // past a line too long for the scanner
	}()
	select {
	case a := <-bound:
		s.Endpoint = "http://" + a
	case <-p.done:
		t.Fatalf("local-kms exited before listening on %s:\n%s", addr, s.logs.String())
	}
	// A real request, to know the emulator answers and not merely listens.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().ListKeys(ctx, &kms.ListKeysInput{}); err != nil {
		t.Fatalf("local-kms at %s does not answer ListKeys: %v\n%s", s.Endpoint, err, s.logs.String())
	}
}

// Stop kills the emulator and waits for it to exit; later KMS calls get "connection refused" until
// Restart. Safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill() // already gone is fine
	<-p.done
}

// Logs returns what the emulator has logged so far (for failure messages).
func (s *Server) Logs() string { return s.logs.String() }

// Client returns an SDK client for the emulator, for test set-up (CreateKey, EnableKeyRotation, …).
func (s *Server) Client() *kms.Client {
	return kms.New(kms.Options{
		Region:           Region,
		BaseEndpoint:     aws.String(s.Endpoint),
		Credentials:      credentials.NewStaticCredentialsProvider(accessKeyID, secretAccessKey, ""),
		RetryMaxAttempts: 1,
	})
}

// CreateKey creates a symmetric encryption key and returns its ARN.
func (s *Server) CreateKey(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := s.Client().CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("credbroker test KEK")})
	if err != nil {
		t.Fatalf("CreateKey on local-kms: %v", err)
	}
	return aws.ToString(out.KeyMetadata.Arn)
}

// KeyURI is the --master-key-uri for arn: "aws-kms://" + arn.
func KeyURI(arn string) string { return "aws-kms://" + arn }

// Env is the environment that points the AWS SDK's default chain at this emulator with dummy
// credentials and nothing from the host (no ~/.aws files, no instance metadata). Append it to a
// child's environment (brokerd) or use SetEnv for this process.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + s.Endpoint,
		"AWS_ACCESS_KEY_ID=" + accessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + secretAccessKey,
		"AWS_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(s.dataDir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(s.dataDir, "no-aws-credentials"),
	}
}

// SetEnv applies Env to this process for the rest of t (t.Setenv: not with t.Parallel).
func (s *Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// Binary returns the emulator binary: $CREDBROKER_LOCAL_KMS, or one built from ./localkms into
// the repository's .tools/bin (once; concurrent test processes wait on a lock for the first build).
// It skips t when the module proxy cannot serve local-kms's modules.
func Binary(t testing.TB) string {
	t.Helper()
	if reason := os.Getenv(EnvSkip); reason != "" {
		t.Skipf("no local-kms: %s", reason)
	}
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", EnvBinary, p, err)
		}
		return p
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(root, "broker", "kms", "awskms", "localkmstest", "localkms")
	sum, err := sourceHash(src)
	if err != nil {
		t.Fatal(err)
	}
	binDir := filepath.Join(root, ".tools", "bin")
	bin := filepath.Join(binDir, "localkms-"+sum)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(binDir, ".localkms.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err == nil { // another process built it while we waited
		return bin
	}
	if out, err := goCmd(src, "mod", "download"); err != nil {
		t.Skipf("local-kms's modules are not available from the module proxy, skipping: %v\n%s", err, out)
	}
	tmp := bin + ".tmp"
	if out, err := goCmd(src, "build", "-o", tmp, "."); err != nil {
		t.Fatalf("building local-kms (%s): %v\n%s", src, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func goCmd(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly -buildvcs=false", "GOWORK=off")
	return cmd.CombinedOutput()
}

// repoRoot finds the repository from the test's working directory (a package directory inside it)
// by its go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/credbroker/credbroker\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("localkmstest: no credbroker go.mod above the working directory")
		}
		dir = parent
	}
}

// sourceHash names a build by its inputs, so an edit to the main or a new pin rebuilds.
func sourceHash(dir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}
