package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// --audit-retention takes days, as operators (and the README) write retention.
func TestAuditRetentionFlag(t *testing.T) {
	for _, tc := range []struct{ in, want, wantErr string }{
		{"30d", "30d", ""},
		{"1d12h", "1d12h", ""},
		{"720h", "30d", ""},
		{"0", "0s", ""},
		{"30days", "", "not a duration"},
		{"-1h", "", "not a duration"},
	} {
		cmd := newCommand()
		err := cmd.ParseFlags([]string{"--audit-retention", tc.in})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("--audit-retention %s: %v, want error %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("--audit-retention %s: %v", tc.in, err)
			continue
		}
		if got := cmd.Flags().Lookup("audit-retention").Value.String(); got != tc.want {
			t.Errorf("--audit-retention %s = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// brokerd refuses, before it opens anything, an http:// upstream off loopback (the key would
// cross the network in clear text, to any proxy on the way), a loopback http:// upstream through a
// proxy off this host (the proxy reads the call whole), and a malformed --upstream-proxy.
func TestUpstreamURLValidatedAtStart(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--upstream-url", "http://example.com"}, "http:// is refused for example.com"},
		{[]string{"--upstream-url", "http://api.scavio.dev:80/v1"}, "not a loopback host"},
		{[]string{"--upstream-url", "https://api.scavio.dev", "--upstream-proxy", "ftp://proxy"}, "--upstream-proxy must be"},
		{[]string{"--upstream-url", "http://127.0.0.1:8931", "--upstream-proxy", "http://proxy.corp:3128"}, "would reach the proxy in clear text"},
		{[]string{"--upstream-url", "https://api.scavio.dev", "--upstream-proxy-auth-file", dir + "/proxy-auth"}, "--upstream-proxy-auth-file needs --upstream-proxy"},
	} {
		cmd := newCommand()
		cmd.SetArgs(append(tc.args, "--db", dir+"/broker.db", "--master-keyset", dir+"/none", "--socket", dir+"/b.sock"))
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("brokerd %v: %v, want %q", tc.args, err, tc.wantErr)
		}
	}
}

// --master-key-uri's help names the form of every KMS key URI brokerd opens, not only hcvault://.
func TestMasterKeyURIHelpNamesEveryScheme(t *testing.T) {
	usage := newCommand().Flags().Lookup("master-key-uri").Usage
	for _, scheme := range []string{"hcvault://", "aws-kms://", "gcp-kms://"} {
		if !strings.Contains(usage, scheme) {
			t.Errorf("--master-key-uri help does not name %s: %s", scheme, usage)
		}
	}
}

// Every brokerd flag is in the README's flag table (a row starting "| `--"), where operators look.
func TestReadmeDocumentsEveryFlag(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "| `--") {
			rows = append(rows, l)
		}
	}
	table := strings.Join(rows, "\n")
	newCommand().Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" || f.Hidden {
			return
		}
		if !strings.Contains(table, "`--"+f.Name) && !strings.Contains(table, "--"+f.Name+"`") {
			t.Errorf("README's brokerd flag table does not mention --%s", f.Name)
		}
	})
}

// --shutdown-timeout 0 or below is refused with a clear message; it used to be taken silently as
// the default 10s, so an operator who asked for no drain (or typed -10s) got a 10 s one.
func TestShutdownTimeoutMustBePositive(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"0", "-5s"} {
		out, err := exec.Command(filepath.Join(binDir, "brokerd"), "--shutdown-timeout", v, "--db", dir+"/broker.db",
			"--master-keyset", dir+"/none", "--socket", dir+"/b.sock", "--upstream-url", "https://api.scavio.dev").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--shutdown-timeout must be positive") {
			t.Errorf("brokerd --shutdown-timeout %s: %v, %s", v, err, out)
		}
	}
}

// A malformed --upstream-url is refused before anything starts, in the operator's words: it used
// to pass the flag checks, and upstream.New refused it ("BaseURL must …") only after the database
// had been created (and the KMS asked, and a re-wrap run).
func TestMalformedUpstreamURLRefusedBeforeTheDatabase(t *testing.T) {
	dir := t.TempDir()
	keyset := filepath.Join(dir, "master.json")
	if out, err := exec.Command(filepath.Join(binDir, "brokerctl"), "keyset", "new", "--out", keyset).CombinedOutput(); err != nil {
		t.Fatalf("keyset new: %v %s", err, out)
	}
	for _, tc := range []struct{ url, want string }{
		{"api.scavio.dev", "--upstream-url must be an https:// URL"},
		{"ftp://api.scavio.dev", "--upstream-url must be an https:// URL"},
		{"https://", "--upstream-url names no host"},
		{"https://user:pw-s3cret@api.scavio.dev", "--upstream-url must not hold a user or password"},
		{"https://api.scavio.dev/?k=v", "--upstream-url must not have a query or fragment"},
	} {
		db := filepath.Join(dir, "broker.db")
		out, err := exec.Command(filepath.Join(binDir, "brokerd"), "--upstream-url", tc.url, "--db", db,
			"--master-keyset", keyset, "--socket", filepath.Join(dir, "b.sock")).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("brokerd --upstream-url %s: %v, %s; want %q", tc.url, err, out, tc.want)
		}
		if strings.Contains(string(out), "s3cret") {
			t.Errorf("brokerd --upstream-url %s: the error repeats the password: %s", tc.url, out)
		}
		if _, err := os.Stat(db); err == nil {
			t.Errorf("brokerd --upstream-url %s: the database was created before the flag was refused", tc.url)
			os.Remove(db)
		}
	}
}
