package client

import (
	"context"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// ImportEntry is one credential for ImportCredentials.
type ImportEntry struct {
	Name  string
	Value []byte
}

// importChunk keeps each streamed message well under brokerd's 64 KiB request bound (an entry is
// at most a 64-byte name and an 8 KiB value).
const importChunk = 32 << 10

// ImportCredentials stores every entry in brokerd as version 1 (how=import) in one transaction:
// all of them, or on any error none. The entries are streamed in parts; brokerd stores nothing
// until the last one arrived.
func (c *Client) ImportCredentials(ctx context.Context, entries []ImportEntry, source string) ([]*credbrokerv1.Credential, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // on an error below, abandons the stream: brokerd then stores nothing
	stream, err := c.admin.ImportCredentials(ctx)
	if err != nil {
		return nil, c.convert(err)
	}
	req := &credbrokerv1.ImportCredentialsRequest{Source: source}
	size := 0
	send := func() error {
		err := stream.Send(req)
		req, size = &credbrokerv1.ImportCredentialsRequest{}, 0
		return err
	}
	for _, e := range entries {
		if size > 0 && size+len(e.Name)+len(e.Value)+16 > importChunk {
			if err := send(); err != nil {
				break // the server ended the call; CloseAndRecv below returns its status
			}
		}
		req.Entries = append(req.Entries, &credbrokerv1.ImportCredentialsRequest_Entry{Name: e.Name, Value: e.Value})
		size += len(e.Name) + len(e.Value) + 16
	}
	if len(req.Entries) > 0 || req.Source != "" {
		_ = send() // an error here is the server's status, which CloseAndRecv returns
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredentials(), nil
}
