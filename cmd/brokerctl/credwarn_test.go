package main

import (
	"strings"
	"testing"
)

// `credential put` warns on stderr when no tool spends the name, and stores the value anyway.
func TestCredentialPutWarnsUnusedName(t *testing.T) {
	for _, tc := range []struct {
		name     string
		wantWarn bool
	}{
		{"scavio_api_key", false},
		{"scavio", true},
		{"openai_key", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAPI{}
			r := runCmd(t, f, "s3cret\n", nil, "credential", "put", tc.name)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if f.putName != tc.name || r.stdout != "stored "+tc.name+" version 1\n" {
				t.Fatalf("not stored: sent %q, stdout %q", f.putName, r.stdout)
			}
			warned := strings.Contains(r.stderr, "warning: no tool uses credential "+tc.name+" (the tools spend scavio_api_key)")
			if warned != tc.wantWarn {
				t.Fatalf("warned = %v, want %v; stderr %q", warned, tc.wantWarn, r.stderr)
			}
			if strings.Contains(r.stderr, "s3cret") {
				t.Fatal("the warning echoes the value")
			}
		})
	}
}

// The help's example uses the name the tools spend.
func TestCredentialPutHelpExample(t *testing.T) {
	r := runCmd(t, &fakeAPI{}, "", nil, "credential", "put", "--help")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !strings.Contains(r.stdout, "brokerctl credential put scavio_api_key <") || strings.Contains(r.stdout, "credential put scavio <") {
		t.Fatalf("help example does not store scavio_api_key:\n%s", r.stdout)
	}
}
