package client

import (
	"context"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// AddWorkload registers a program that may fetch tokens by attestation (admin).
func (c *Client) AddWorkload(ctx context.Context, req *credbrokerv1.AddWorkloadRequest) (*credbrokerv1.Workload, error) {
	resp, err := c.admin.AddWorkload(ctx, req)
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetWorkload(), nil
}

// ListWorkloads returns every registration (admin).
func (c *Client) ListWorkloads(ctx context.Context) ([]*credbrokerv1.Workload, error) {
	resp, err := c.admin.ListWorkloads(ctx, &credbrokerv1.ListWorkloadsRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetWorkloads(), nil
}

// RemoveWorkload deletes a registration (admin).
func (c *Client) RemoveWorkload(ctx context.Context, name string) error {
	_, err := c.admin.RemoveWorkload(ctx, &credbrokerv1.RemoveWorkloadRequest{Name: name})
	return c.convert(err)
}

// FetchToken asks brokerd for a token by attestation: no secret is sent, brokerd identifies this
// process from the socket. The token is bound to this process's uid and dies when the process
// exits. tools may be empty (all of the registration's).
func (c *Client) FetchToken(ctx context.Context, tools []string) (*credbrokerv1.FetchTokenResponse, error) {
	resp, err := c.search.FetchToken(ctx, &credbrokerv1.FetchTokenRequest{Tools: tools})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}
