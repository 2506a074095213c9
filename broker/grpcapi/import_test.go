package grpcapi

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ImportCredentials is one transaction: a failure anywhere in a large import (a bad value or a
// repeated name found late, a name already stored found by the store mid-transaction) leaves
// nothing stored, and a good import stores every entry in one call.
func TestImportCredentialsAllOrNothing(t *testing.T) {
	h := newHarness(t)
	c, err := client.New(h.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	h.putKey(t) // scavio_api_key exists

	const n = 5000
	entries := func(mutate func([]client.ImportEntry) []client.ImportEntry) []client.ImportEntry {
		out := make([]client.ImportEntry, n)
		for i := range out {
			out[i] = client.ImportEntry{Name: fmt.Sprintf("key_%04d", i), Value: []byte(fmt.Sprintf("sk_live_%04d", i))}
		}
		return mutate(out)
	}
	for _, tc := range []struct {
		name    string
		entries []client.ImportEntry
		code    codes.Code
		msg     string
	}{
		{"bad value late", entries(func(e []client.ImportEntry) []client.ImportEntry {
			e[n-3].Value = []byte("two\nlines")
			return e
		}), codes.InvalidArgument, "entry 4998"},
		{"repeated name across messages", entries(func(e []client.ImportEntry) []client.ImportEntry {
			return append(e, client.ImportEntry{Name: "key_0001", Value: []byte("sk_other")})
		}), codes.InvalidArgument, `credential "key_0001" appears more than once`},
		{"name taken, found mid-transaction", entries(func(e []client.ImportEntry) []client.ImportEntry {
			e[n/2].Name = "scavio_api_key"
			return e
		}), codes.AlreadyExists, `"scavio_api_key"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ImportCredentials(ctx, tc.entries, "fernet")
			requireGRPCStatus(t, err, tc.code, tc.msg)
			requireGRPCStatus(t, err, tc.code, "nothing was imported")
			list, err := h.admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Credentials) != 1 {
				t.Fatalf("after a failed import brokerd holds %d credentials, want 1 (nothing imported)", len(list.Credentials))
			}
		})
	}

	got, err := c.ImportCredentials(ctx, entries(func(e []client.ImportEntry) []client.ImportEntry { return e }), "fernet")
	if err != nil || len(got) != n || got[n-1].GetName() != "key_4999" || got[n-1].GetVersion() != 1 {
		t.Fatalf("import of %d: %d credentials, %v", n, len(got), err)
	}
	list, err := h.admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil || len(list.Credentials) != n+1 {
		t.Fatalf("brokerd holds %d credentials, want %d: %v", len(list.GetCredentials()), n+1, err)
	}
	hist, err := h.admin.CredentialHistory(ctx, &pb.CredentialHistoryRequest{Name: "key_1234"})
	if err != nil || len(hist.Versions) != 1 || hist.Versions[0].How != "import" {
		t.Fatalf("history: %v %v", hist, err)
	}
	// The call is audited like every state-changing admin call: started, then its outcome.
	recs, err := h.admin.ListAudit(ctx, &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var codesSeen []string
	for _, r := range recs.Records {
		if r.Method == pb.AdminService_ImportCredentials_FullMethodName {
			codesSeen = append(codesSeen, r.Code)
		}
	}
	want := []string{"Started", "InvalidArgument", "Started", "InvalidArgument", "Started", "AlreadyExists", "Started", "OK"}
	if fmt.Sprint(codesSeen) != fmt.Sprint(want) {
		t.Errorf("ImportCredentials audit codes %v, want %v", codesSeen, want)
	}
}

// An import larger than the bound is refused while it streams, before brokerd holds it all.
func TestImportCredentialsTooLarge(t *testing.T) {
	h := newHarness(t)
	c, err := client.New(h.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	entries := make([]client.ImportEntry, broker.MaxImportEntries+1)
	for i := range entries {
		entries[i] = client.ImportEntry{Name: fmt.Sprintf("k%d", i), Value: []byte("v")}
	}
	_, err = c.ImportCredentials(context.Background(), entries, "fernet")
	requireGRPCStatus(t, err, codes.InvalidArgument, "import too large")
	list, err := h.admin.ListCredentials(context.Background(), &pb.ListCredentialsRequest{})
	if err != nil || len(list.Credentials) != 0 {
		t.Fatalf("after a refused import: %d credentials, %v", len(list.GetCredentials()), err)
	}
}
