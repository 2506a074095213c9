package grpcapi

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/answerwire"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A miss sends its whole message as unknown fields (missMessage): they must be the very bytes
// proto's deterministic marshal writes for the message with its fields set, whatever the head
// fields and the number of results kept. (The results' and metadata's own bytes are held to the
// old encoding/json + structpb conversion by broker's TestTranscodeAnswer and FuzzTranscodeAnswer.)
func TestMissMessage(t *testing.T) {
	bodies := []string{
		`{"query":"q","results":[{"title":"A","url":"u","snippet":"s","position":1,"x":{"y":[1,null]}},{"link":"l","position":2},{}],"credits_used":1}`,
		`{"results":[]}`,
		`{"a":"only metadata"}`,
		`null`,
	}
	heads := []*pb.SearchResponse{
		{Tool: "web_search", Credential: "scavio_api_key", CredentialVersion: 1, Credits: 1},
		{Tool: "google_search", Credential: "k", CredentialVersion: 1 << 40, Credits: 300, RateLimitWait: durationpb.New(1500 * time.Millisecond)},
		{Tool: "web_search", Credential: "k", CredentialVersion: 2, RateLimitWait: durationpb.New(3 * time.Second)},
		{Tool: "web_search", Credential: "k", CredentialVersion: 2, RateLimitWait: durationpb.New(time.Nanosecond)},
		{},
	}
	det := proto.MarshalOptions{Deterministic: true}
	for _, body := range bodies {
		w, err := answerwire.Transcode([]byte(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		for _, head := range heads {
			for _, want := range []int{0, 1, 2, 5} {
				var part pb.SearchResponse
				if err := proto.Unmarshal(append(append([]byte(nil), w.Results(want)...), w.Metadata()...), &part); err != nil {
					t.Fatal(err)
				}
				msg := proto.Clone(head).(*pb.SearchResponse)
				msg.Results, msg.Metadata = part.Results, part.Metadata
				wantBytes, err := det.Marshal(msg)
				if err != nil {
					t.Fatal(err)
				}
				if got := missMessage(head, w, want); !bytes.Equal(got, wantBytes) {
					t.Errorf("%s, head %v, %d results:\n got %x\nwant %x", body, head, want, got, wantBytes)
				}
			}
		}
	}
}

// capturingCodec is gRPC's proto codec that keeps the wire bytes of the last message it decoded.
type capturingCodec struct {
	mu   sync.Mutex
	last []byte
}

func (c *capturingCodec) Marshal(v any) (mem.BufferSlice, error) {
	return encoding.GetCodecV2("proto").Marshal(v)
}

func (c *capturingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b := data.Materialize()
	c.mu.Lock()
	c.last = b
	c.mu.Unlock()
	return proto.Unmarshal(b, v.(proto.Message))
}

func (c *capturingCodec) Name() string { return "proto" }

// Over the wire, a miss's answer is the deterministic marshal of the message the client decodes,
// with what was asked for; a hit then carries the same message but for cached and cache_age.
func TestSearchMissBytes(t *testing.T) {
	h := newHarnessWith(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = time.Minute })
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search", "google_search"}})
	codec := &capturingCodec{}
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := pb.NewSearchServiceClient(conn)
	det := proto.MarshalOptions{Deterministic: true}
	for _, req := range []*pb.SearchRequest{
		{Query: "wire bytes"},
		{Query: "wire bytes three", NumResults: 3},
		{Tool: "google_search", Query: "wire bytes google"},
	} {
		miss, err := sc.Search(withToken(tok.Token), req)
		if err != nil {
			t.Fatal(err)
		}
		raw := codec.last
		canon, err := det.Marshal(miss)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, canon) {
			t.Fatalf("%v: miss sent\n%x\nnot its deterministic marshal\n%x", req, raw, canon)
		}
		want := int(req.NumResults)
		if want == 0 && req.Tool == "" {
			want = broker.DefaultNumResult
		}
		if miss.Cached || miss.Credits == 0 || miss.Metadata == nil || len(miss.Results) == 0 || want > 0 && len(miss.Results) != want || miss.Tool == "" || miss.Credential != broker.DefaultCredential {
			t.Fatalf("%v: miss %v", req, miss)
		}
		hit, err := sc.Search(withToken(tok.Token), req)
		if err != nil {
			t.Fatal(err)
		}
		if !hit.Cached {
			t.Fatalf("%v: second call not a hit", req)
		}
		hit.Cached, hit.CacheAge, hit.Credits = false, nil, miss.Credits
		if !proto.Equal(hit, miss) {
			t.Fatalf("%v: hit %v\nmiss %v", req, hit, miss)
		}
	}
}
