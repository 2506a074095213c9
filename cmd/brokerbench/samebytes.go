package main

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// capturingCodec is gRPC's proto codec that also keeps the wire bytes of the last message it
// decoded, so brokerbench can compare what two servers sent, byte for byte.
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

// sameBytes sends one new query to the floor and to brokerd and reports whether their answers
// (a cache miss at brokerd) were the same bytes on the wire (map entries in sorted order): the floor must do the same
// conversion and send the same message, or brokerd/floor would compare different work.
func sameBytes(ctx context.Context, floorSock, brokerdSock, tok string) (bool, string, error) {
	query := benchQuery + " byte check"
	var got [2][]byte
	for i, sock := range []string{floorSock, brokerdSock} {
		codec := &capturingCodec{}
		c, err := client.New(sock, client.WithToken(tok), client.WithDialOptions(grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec))))
		if err != nil {
			return false, "", err
		}
		_, err = c.Search(ctx, &pb.SearchRequest{Tool: broker.DefaultTool, Query: query})
		c.Close()
		if err != nil {
			return false, "", fmt.Errorf("byte check search: %w", err)
		}
		got[i] = codec.last
	}
	// gRPC's proto codec writes a Struct's map entries in Go's random map order, so one server's
	// answers to the same query differ in byte order from call to call: compare the bytes in
	// proto's deterministic (sorted) order.
	var canon [2][]byte
	for i, b := range got {
		var m pb.SearchResponse
		if err := proto.Unmarshal(b, &m); err != nil {
			return false, "", fmt.Errorf("byte check: decode: %w", err)
		}
		var err error
		if canon[i], err = (proto.MarshalOptions{Deterministic: true}).Marshal(&m); err != nil {
			return false, "", err
		}
	}
	if len(got[0]) == len(got[1]) && bytes.Equal(canon[0], canon[1]) {
		return true, fmt.Sprintf("%d bytes each, equal in deterministic order", len(got[0])), nil
	}
	return false, fmt.Sprintf("floor %d bytes vs brokerd %d: different", len(got[0]), len(got[1])), nil
}
