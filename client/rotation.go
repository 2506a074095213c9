package client

import (
	"context"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// RotateCredentialVerified stores a new version of a credential. With verify, brokerd stages it,
// makes one upstream call with it and promotes it only if the upstream accepts it; a rejected key
// is ErrFailedPrecondition and the current version stays in use.
func (c *Client) RotateCredentialVerified(ctx context.Context, name string, value []byte, verify bool) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.RotateCredential(ctx, &credbrokerv1.RotateCredentialRequest{Name: name, Value: value, Verify: verify})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// CredentialHistory lists a credential's kept versions (never values).
func (c *Client) CredentialHistory(ctx context.Context, name string) (*credbrokerv1.CredentialHistoryResponse, error) {
	resp, err := c.admin.CredentialHistory(ctx, &credbrokerv1.CredentialHistoryRequest{Name: name})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// RollbackCredential makes version to (0: the previous one) current again, as a new version.
func (c *Client) RollbackCredential(ctx context.Context, name string, to uint64) (*credbrokerv1.RollbackCredentialResponse, error) {
	resp, err := c.admin.RollbackCredential(ctx, &credbrokerv1.RollbackCredentialRequest{Name: name, ToVersion: to})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// SetRotationPolicy sets a credential's rotation policy; nil clears it.
func (c *Client) SetRotationPolicy(ctx context.Context, name string, p *credbrokerv1.RotationPolicy) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.SetRotationPolicy(ctx, &credbrokerv1.SetRotationPolicyRequest{Name: name, Policy: p})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// ImportCredential stores a credential read from another store as version 1 (how=import).
func (c *Client) ImportCredential(ctx context.Context, name string, value []byte, source string) (*credbrokerv1.Credential, error) {
	resp, err := c.admin.ImportCredential(ctx, &credbrokerv1.ImportCredentialRequest{Name: name, Value: value, Source: source})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp.GetCredential(), nil
}

// Rekey rotates brokerd's data keyset and re-encrypts every stored version.
func (c *Client) Rekey(ctx context.Context) (*credbrokerv1.RekeyResponse, error) {
	resp, err := c.admin.Rekey(ctx, &credbrokerv1.RekeyRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// RewrapMasterKey asks brokerd to re-wrap its database under the master key's current version
// (a KMS key rotated in the KMS). Admin only.
func (c *Client) RewrapMasterKey(ctx context.Context) (*credbrokerv1.RewrapMasterKeyResponse, error) {
	resp, err := c.admin.RewrapMasterKey(ctx, &credbrokerv1.RewrapMasterKeyRequest{})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}

// MigrateMasterKey asks brokerd to move its database under another master key: an absolute
// keyset file path or a KMS key URI, which brokerd opens itself. Admin only.
func (c *Client) MigrateMasterKey(ctx context.Context, to string) (*credbrokerv1.MigrateMasterKeyResponse, error) {
	resp, err := c.admin.MigrateMasterKey(ctx, &credbrokerv1.MigrateMasterKeyRequest{To: to})
	if err != nil {
		return nil, c.convert(err)
	}
	return resp, nil
}
