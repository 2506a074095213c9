package grpcapi

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// rawCodec sends bytes as they are, so a test can put on the wire what a real client's protobuf
// library would refuse to encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(d []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), d...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// auditFor returns the audit records of method (by suffix).
func auditFor(t *testing.T, h *harness, method string) []*pb.AuditRecord {
	t.Helper()
	r, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.AuditRecord
	for _, rec := range r.GetRecords() {
		if strings.HasSuffix(rec.GetMethod(), method) {
			out = append(out, rec)
		}
	}
	return out
}

// A request gRPC cannot decode (invalid UTF-8 in a string field) never reaches the handlers or
// the auditor's interceptor; it is still refused and still audited.
func TestUndecodableRequestIsAudited(t *testing.T) {
	h := newHarness(t)
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var msg []byte // PutCredentialRequest{name: "bad\xffname", value: "v"}
	msg = protowire.AppendTag(msg, 1, protowire.BytesType)
	msg = protowire.AppendBytes(msg, []byte("bad\xffname"))
	msg = protowire.AppendTag(msg, 2, protowire.BytesType)
	msg = protowire.AppendBytes(msg, []byte("v"))
	var out []byte
	err = conn.Invoke(context.Background(), "/credbroker.v1.AdminService/PutCredential", &msg, &out)
	// gRPC answers it itself, while decoding: Internal (its code for a codec failure).
	if st, _ := status.FromError(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "invalid UTF-8") {
		t.Fatalf("undecodable request: %v", err)
	}
	// The record follows gRPC's answer, so it may land a moment after the client has it.
	recs := auditFor(t, h, "/PutCredential")
	for deadline := time.Now().Add(10 * time.Second); len(recs) == 0 && time.Now().Before(deadline); recs = auditFor(t, h, "/PutCredential") {
		time.Sleep(10 * time.Millisecond)
	}
	if len(recs) != 1 || recs[0].GetEvent() != "undecodable-request" || recs[0].GetCode() != "Internal" || recs[0].GetCredential() != "" {
		t.Fatalf("audit of the undecodable call: %v", recs)
	}
	// A call that reached the handler is recorded once, not twice.
	h.search.WhoAmI(context.Background(), &pb.WhoAmIRequest{})
	if recs := auditFor(t, h, "/WhoAmI"); len(recs) != 1 || recs[0].GetEvent() == "undecodable-request" {
		t.Fatalf("audit of a handled call: %v", recs)
	}
}

// Bad input is refused with InvalidArgument, the error repeats at most a bounded prefix of it,
// and the audit log keeps no unvalidated name.
func TestHostileInputIsRefusedAndNotKept(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search", "google_search"}})
	junk := "SK_LIVE_TYPED_IN_THE_WRONG_FIELD\n" + strings.Repeat("Q", 30000)
	cases := []struct {
		name string
		call func() error
	}{
		{"limits on an invalid name", func() error {
			_, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: junk, Limits: &pb.CredentialLimits{MonthlyCredits: 10}})
			return err
		}},
		{"limits on an empty name", func() error {
			_, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "", Limits: &pb.CredentialLimits{MonthlyCredits: 10}})
			return err
		}},
		{"put with an invalid name", func() error {
			_, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: junk, Value: []byte("v")})
			return err
		}},
		{"mint an unknown tool", func() error {
			_, err := h.admin.MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{junk}, Ttl: durationpb.New(3600e9)})
			return err
		}},
		{"search an unknown tool", func() error {
			_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Tool: junk, Query: "q"})
			return err
		}},
		{"a key that cannot travel in a header", func() error {
			_, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: "other_key", Value: []byte(testKey + "\r")})
			return err
		}},
		{"max_age past time.Duration", func() error {
			_, err := h.admin.SetRotationPolicy(context.Background(), &pb.SetRotationPolicyRequest{Name: "scavio_api_key",
				Policy: &pb.RotationPolicy{MaxAge: &durationpb.Duration{Seconds: 31536000000}}})
			return err
		}},
		{"max_wait past time.Duration", func() error {
			_, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
				Limits: &pb.CredentialLimits{RateLimit: 1, RatePeriod: durationpb.New(60e9), MaxWait: &durationpb.Duration{Seconds: 31536000000}}})
			return err
		}},
		{"a country code that only lowercases to ASCII", func() error {
			_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Tool: "google_search", Query: "q",
				Google: &pb.GoogleSearchOptions{CountryCode: "\u212a\u212a"}})
			return err
		}},
	}
	for _, tc := range cases {
		err := tc.call()
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
		if len(st.Message()) > 512 || strings.Contains(st.Message(), "SK_LIVE_TYPED") && strings.Contains(st.Message(), "QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ") {
			t.Errorf("%s: error repeats the input (%d bytes): %.120q", tc.name, len(st.Message()), st.Message())
		}
	}
	r, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range r.GetRecords() {
		if strings.Contains(rec.String(), "SK_LIVE_TYPED") || strings.Contains(rec.String(), "QQQQ") {
			t.Fatalf("audit record keeps unvalidated input: %.200s", rec.String())
		}
	}
}

// after_seq at the top of the range lists nothing (it used to wrap to the start).
func TestListAuditAfterLastSeq(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	r, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{AfterSeq: math.MaxUint64})
	if err != nil || len(r.GetRecords()) != 0 {
		t.Fatalf("after_seq=MaxUint64: %d records, %v", len(r.GetRecords()), err)
	}
}
