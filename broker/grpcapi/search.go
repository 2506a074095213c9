package grpcapi

import (
	"context"
	"fmt"
	"strconv"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker"
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
	out := &pb.SearchResponse{
		Tool: res.Tool, Credential: res.Credential, CredentialVersion: res.CredentialVersion, Cached: res.Cached, Credits: res.Credits,
		Results: make([]*pb.SearchResult, 0, len(res.Results)),
	}
	for _, r := range res.Results {
		raw, err := structpb.NewStruct(r.Raw)
		if err != nil {
			return nil, toStatus(s.log, "Search", err)
		}
		out.Results = append(out.Results, &pb.SearchResult{
			Title: r.Title, Url: r.URL, Snippet: r.Snippet, Position: int32(r.Position), Raw: raw,
		})
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
	if len(res.Metadata) > 0 {
		if out.Metadata, err = structpb.NewStruct(res.Metadata); err != nil {
			return nil, toStatus(s.log, "Search", err)
		}
	}
	return out, nil
}

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
