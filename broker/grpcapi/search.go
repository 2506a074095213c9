package grpcapi

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/answerwire"
	"github.com/credbroker/credbroker/broker/upstream"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// RateLimitWaitHeader carries, in seconds, how long a Search waited for a slot of its credential's
// rate limiter (sent only when it waited), for clients that only look at metadata.
const RateLimitWaitHeader = "x-credbroker-ratelimit-wait"

// SearchService adapts broker.Broker to credbroker.v1.SearchService: it converts proto to domain
// types and back, and nothing else.
type SearchService struct {
	pb.UnimplementedSearchServiceServer
	b   *broker.Broker
	log *slog.Logger
}

// Search implements SearchService.Search.
func (s *SearchService) Search(ctx context.Context, req *pb.SearchRequest) (*pb.SearchResponse, error) {
	in := broker.SearchRequest{Tool: req.GetTool(), Query: req.GetQuery(), NumResults: int(req.GetNumResults()), NoCache: req.GetNoCache()}
	if g := req.GetGoogle(); g != nil {
		in.Google = broker.GoogleOptions{
			SearchType: g.GetSearchType(), CountryCode: g.GetCountryCode(), Language: g.GetLanguage(),
			Page: int(g.GetPage()), Device: g.GetDevice(), NFPR: g.Nfpr, LightRequest: g.LightRequest,
		}
	}
	res, err := s.b.Search(ctx, bearerToken(ctx), callerFrom(ctx), in)
	if err != nil {
		return nil, toStatus(s.log, "Search", err)
	}
	// The upstream may answer with more results than were asked for; the caller gets what it asked
	// for (and brokerd converts no more than that).
	want := broker.ResultsWanted(res.Tool, in)
	out := &pb.SearchResponse{
		Tool: res.Tool, Credential: res.Credential, CredentialVersion: res.CredentialVersion, Cached: res.Cached, Credits: res.Credits,
	}
	if res.Cached {
		out.CacheAge = durationpb.New(res.CacheAge)
		// Also as a header, for clients that only look at metadata.
		grpc.SetHeader(ctx, metadata.Pairs("x-credbroker-cache", fmt.Sprintf("hit; age=%ds", int(res.CacheAge.Seconds()))))
	}
	if res.RateLimitWait > 0 {
		out.RateLimitWait = durationpb.New(res.RateLimitWait)
		grpc.SetHeader(ctx, metadata.Pairs(RateLimitWaitHeader, strconv.FormatFloat(res.RateLimitWait.Seconds(), 'f', 3, 64)))
	}
	// The answer's wire form (package answerwire) on a miss, made by the upstream call's decode (a
	// hit's is made only if its encoding was not kept). It is nil only where the transcoder
	// refused a body encoding/json accepts, and then the results are converted from Decoded.
	var wire *answerwire.Answer
	if !res.Cached {
		var err error
		if wire, err = res.Wire(); err != nil {
			return nil, toStatus(s.log, "Search", err)
		}
	}
	converted := 0 // results in the message, on a miss
	switch {
	case res.Cached:
		// A hit sends the results and metadata as the bytes the first hit encoded and the cache
		// keeps with the answer: no JSON decode, no Struct to build or marshal. They travel as the
		// message's unknown fields, which proto writes out verbatim after the known ones: the
		// wire format of fields 1 and 5, so a client decodes the same message (fields may come in
		// any order on the wire).
		enc, err := res.Encoded(broker.EncodingKey{Edge: "grpc", Results: want}, func() ([]byte, error) {
			wire, err := res.Wire()
			if err != nil {
				return nil, err
			}
			if wire != nil {
				r, m := wire.Results(want), wire.Metadata()
				return append(append(make([]byte, 0, len(r)+len(m)), r...), m...), nil
			}
			part, err := answerMessage(res, want)
			if err != nil {
				return nil, err
			}
			return proto.Marshal(part)
		})
		if err != nil {
			return nil, toStatus(s.log, "Search", err)
		}
		out.ProtoReflect().SetUnknown(protoreflect.RawFields(enc))
	case wire != nil:
		// A miss sends the transcoded answer. Unknown fields go out after the known ones, and
		// results (field 1) come first in the message proto writes, so the whole message travels
		// as unknown fields, in field order: the same bytes as the deterministic marshal of the
		// message with its fields set (missMessage's test holds it to that).
		converted = wire.Len()
		if want > 0 {
			converted = min(converted, want)
		}
		msg := missMessage(out, wire, want)
		out = &pb.SearchResponse{}
		out.ProtoReflect().SetUnknown(protoreflect.RawFields(msg))
	default:
		part, err := answerMessage(res, want)
		if err != nil {
			return nil, toStatus(s.log, "Search", err)
		}
		out.Results, out.Metadata = part.Results, part.Metadata
		converted = len(out.Results)
	}
	// Never send what a client with gRPC's default limit cannot receive: it would fail with a
	// transport error that says nothing of the cause. The typed fields and the raw Struct of every
	// result are counted together, as they travel.
	if n := responseSize(res, out); n > MaxResponseBytes {
		// A hit's results are bytes, not counted: name what was asked for instead ("all" for 0).
		count := strconv.Itoa(converted)
		if res.Cached {
			count = "all"
			if want > 0 {
				count = strconv.Itoa(want)
			}
		}
		return nil, toStatus(s.log, "Search", fmt.Errorf("%w: the answer is %d bytes with %s results, over the %d bytes a gRPC client accepts by default; ask for fewer results",
			errAnswerTooLarge, n, count, MaxResponseBytes))
	}
	return out, nil
}

// missMessage is the whole SearchResponse of a miss as proto's deterministic marshal writes it
// with fields set, in field order: results (1, the first want, all for 0), tool (2), credential
// (3), credential_version (4), metadata (5), then credits (8) and rate_limit_wait (9) from head
// (cached, 6, and cache_age, 7, are unset on a miss). Zero scalars are left out, as proto3 does.
func missMessage(head *pb.SearchResponse, wire *answerwire.Answer, want int) []byte {
	results, meta := wire.Results(want), wire.Metadata()
	b := make([]byte, 0, len(results)+len(meta)+len(head.Tool)+len(head.Credential)+48)
	b = append(b, results...)
	if head.Tool != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, head.Tool)
	}
	if head.Credential != "" {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, head.Credential)
	}
	if head.CredentialVersion != 0 {
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, head.CredentialVersion)
	}
	b = append(b, meta...)
	if head.Credits != 0 {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, head.Credits)
	}
	if d := head.RateLimitWait; d != nil {
		var dur []byte
		if d.Seconds != 0 {
			dur = protowire.AppendTag(dur, 1, protowire.VarintType)
			dur = protowire.AppendVarint(dur, uint64(d.Seconds))
		}
		if d.Nanos != 0 {
			dur = protowire.AppendTag(dur, 2, protowire.VarintType)
			dur = protowire.AppendVarint(dur, uint64(int64(d.Nanos)))
		}
		b = protowire.AppendTag(b, 9, protowire.BytesType)
		b = protowire.AppendBytes(b, dur)
	}
	return b
}

// answerMessage converts res's results, at most want of them (0: all), and metadata to the
// fields of a SearchResponse that carry them (the rest is left empty).
func answerMessage(res *broker.SearchResult, want int) (*pb.SearchResponse, error) {
	results, meta, err := res.Decoded()
	if err != nil {
		return nil, err
	}
	if want > 0 && len(results) > want {
		results = results[:want]
	}
	out := &pb.SearchResponse{Results: make([]*pb.SearchResult, 0, len(results))}
	for _, r := range results {
		raw, err := structpb.NewStruct(r.Raw)
		if err != nil {
			return nil, err
		}
		out.Results = append(out.Results, &pb.SearchResult{
			Title: r.Title, Url: r.URL, Snippet: r.Snippet, Position: int32(r.Position), Raw: raw,
		})
	}
	if len(meta) > 0 {
		if out.Metadata, err = structpb.NewStruct(meta); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// errAnswerTooLarge: the upstream's answer, trimmed to what was asked for, does not fit in one
// message; it is an upstream.ErrResponseTooLarge whose cure is a smaller request (OutOfRange).
var errAnswerTooLarge = fmt.Errorf("%w", upstream.ErrResponseTooLarge)

// responseSize is out's encoded size where it could be over MaxResponseBytes, else 0: a message
// decoded from an upstream answer is at most maxExpansion times the answer's bytes (the typed
// fields copy strings of the raw Struct, and a Struct spends at most about 6 bytes more than JSON
// on a small number), so a small answer skips proto.Size's walk of the whole message (6.5 µs for
// five results), which gRPC's codec repeats when it marshals.
func responseSize(res *broker.SearchResult, out *pb.SearchResponse) int {
	if b := res.BodyBytes(); b > 0 && b*maxExpansion < MaxResponseBytes {
		return 0
	}
	return proto.Size(out)
}

// maxExpansion bounds a SearchResponse's size over the upstream answer it was decoded from.
const maxExpansion = 8

// MaxResponseBytes bounds a SearchResponse: gRPC clients refuse a message over 4 MiB by default
// (grpc.MaxCallRecvMsgSize), and a few KiB are left for the framing around it.
const MaxResponseBytes = 4<<20 - 4<<10

// WhoAmI implements SearchService.WhoAmI.
func (s *SearchService) WhoAmI(ctx context.Context, _ *pb.WhoAmIRequest) (*pb.WhoAmIResponse, error) {
	t, err := s.b.WhoAmI(ctx, bearerToken(ctx), callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "WhoAmI", err)
	}
	return &pb.WhoAmIResponse{
		TokenId: t.ID, Tools: t.Tools, ExpiresAt: timestamppb.New(t.ExpiresAt), Label: t.Label,
		MaxUses: t.MaxUses, Uses: t.Uses, BindUid: t.BindUID,
	}, nil
}
