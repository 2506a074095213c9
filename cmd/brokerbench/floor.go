package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// floorServer is the physical limit of any gRPC broker on this machine: the same SearchService
// over a Unix socket, making the same upstream call with the same HTTP client package and
// returning the same response message, with nothing else (no token, no decrypt, no audit, no
// metrics). The key is held in memory.
type floorServer struct {
	pb.UnimplementedSearchServiceServer
	up  *upstream.Client
	key []byte
}

func (f *floorServer) Search(ctx context.Context, req *pb.SearchRequest) (*pb.SearchResponse, error) {
	n := int(req.GetNumResults())
	if n == 0 {
		n = broker.DefaultNumResult
	}
	payload, err := json.Marshal(struct {
		Query      string `json:"query"`
		NumResults int    `json:"num_results"`
	}{req.GetQuery(), n})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp, err := f.up.Do(ctx, upstream.Request{Path: scaviotest.SearchPath, Auth: upstream.AuthAPIKeyHeader, Body: payload}, f.key)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out, err := searchResponse(resp.Body)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return out, nil
}

// searchResponse converts an upstream body to the response message the way brokerd does
// (broker.parseResults, then grpcapi's structpb conversion), so the floor pays the same
// serialisation cost.
func searchResponse(body []byte) (*pb.SearchResponse, error) {
	var top map[string]any
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, err
	}
	raw, _ := top["results"].([]any)
	delete(top, "results")
	out := &pb.SearchResponse{Tool: broker.DefaultTool, Credential: broker.DefaultCredential, CredentialVersion: 1,
		Results: make([]*pb.SearchResult, 0, len(raw))}
	for i, item := range raw {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("result %d is not an object", i)
		}
		s, err := structpb.NewStruct(obj)
		if err != nil {
			return nil, err
		}
		r := &pb.SearchResult{Position: int32(i + 1), Raw: s}
		r.Title, _ = obj["title"].(string)
		r.Url, _ = obj["url"].(string)
		r.Snippet, _ = obj["snippet"].(string)
		if p, ok := obj["position"].(float64); ok {
			r.Position = int32(p)
		}
		out.Results = append(out.Results, r)
	}
	if len(top) > 0 {
		var err error
		if out.Metadata, err = structpb.NewStruct(top); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// serveFloor is the "serve-floor" child mode.
func serveFloor(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-floor", flag.ContinueOnError)
	keyFile := fs.String("key-file", "", "file holding the upstream key")
	socket := fs.String("socket", "", "Unix socket to serve on")
	upURL := fs.String("upstream-url", "", "upstream base URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	key, err := readKeyFile(*keyFile)
	if err != nil {
		return err
	}
	up, err := upstream.New(upstream.Config{BaseURL: *upURL})
	if err != nil {
		return err
	}
	os.Remove(*socket)
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 10))
	pb.RegisterSearchServiceServer(g, &floorServer{up: up, key: []byte(key)})
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	fmt.Printf("ready unix://%s\n", *socket)
	return g.Serve(lis)
}
