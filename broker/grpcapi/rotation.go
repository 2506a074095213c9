package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// credentialOut is credentialPB plus the rotation fields: previous and pending versions, policy,
// next due and overdue.
func (s *AdminService) credentialOut(c store.Credential) *pb.Credential {
	out := credentialPB(c)
	out.PreviousVersion, out.PendingVersion = c.Previous, c.Pending
	if c.Policy != nil {
		out.Policy = &pb.RotationPolicy{RotateCommand: c.Policy.RotateCommand, Verify: c.Policy.Verify}
		if c.Policy.MaxAge > 0 {
			out.Policy.MaxAge = durationpb.New(c.Policy.MaxAge)
		}
	}
	if next, overdue, ok := s.b.Due(c); ok {
		out.NextDue, out.Overdue = timestamppb.New(next), overdue
	}
	return out
}

func rotationStatusPB(out *pb.StatusResponse, ri broker.RotationInfo) {
	out.Warnings = ri.Warnings
	out.MasterKeyIds = ri.MasterKeyIDs
	out.DataPrimaryKeyId = ri.DataPrimaryKeyID
	for _, k := range ri.DataKeys {
		out.DataKeys = append(out.DataKeys, &pb.DataKeyUsage{KeyId: k.ID, Primary: k.Primary, Versions: uint64(k.Versions)})
	}
	for _, r := range ri.Rotation {
		rs := &pb.RotationStatus{
			Credential: r.Credential, Version: r.Version, RotatedAt: timestamppb.New(r.RotatedAt), Overdue: r.Overdue,
			AutoRotate: r.AutoRotate, Failures: uint32(r.Failures), LastError: r.LastError,
		}
		if !r.NextDue.IsZero() {
			rs.NextDue = timestamppb.New(r.NextDue)
		}
		if !r.NextAttempt.IsZero() {
			rs.NextAttempt = timestamppb.New(r.NextAttempt)
		}
		out.Rotation = append(out.Rotation, rs)
	}
}

// CredentialHistory implements AdminService.CredentialHistory.
func (s *AdminService) CredentialHistory(ctx context.Context, req *pb.CredentialHistoryRequest) (*pb.CredentialHistoryResponse, error) {
	c, versions, err := s.b.History(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(s.log, "CredentialHistory", err)
	}
	events, err := s.b.CredentialEvents(req.GetName())
	if err != nil {
		return nil, toStatus(s.log, "CredentialHistory", err)
	}
	out := &pb.CredentialHistoryResponse{Credential: s.credentialOut(c)}
	for _, e := range events {
		out.Events = append(out.Events, &pb.CredentialEvent{At: timestamppb.New(e.At), Event: e.Event, Version: e.Version, ByUid: e.ByUID, Detail: e.Detail})
	}
	for _, v := range versions {
		out.Versions = append(out.Versions, &pb.CredentialVersion{
			Version: v.Version, CreatedAt: timestamppb.New(v.CreatedAt), CreatedByUid: v.CreatedByUID, How: string(v.How),
			Verified: v.Verified, State: string(v.State), FromVersion: v.From, KeyId: v.KeyID,
		})
	}
	return out, nil
}

// RollbackCredential implements AdminService.RollbackCredential.
func (s *AdminService) RollbackCredential(ctx context.Context, req *pb.RollbackCredentialRequest) (*pb.RollbackCredentialResponse, error) {
	c, from, err := s.b.Rollback(ctx, req.GetName(), req.GetToVersion(), callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "RollbackCredential", err)
	}
	return &pb.RollbackCredentialResponse{Credential: s.credentialOut(c), FromVersion: from}, nil
}

// SetRotationPolicy implements AdminService.SetRotationPolicy.
func (s *AdminService) SetRotationPolicy(ctx context.Context, req *pb.SetRotationPolicyRequest) (*pb.SetRotationPolicyResponse, error) {
	var p store.Policy
	if rp := req.GetPolicy(); rp != nil {
		if err := durations(durationArg{rp.GetMaxAge(), &p.MaxAge, "max_age"}); err != nil {
			return nil, toStatus(s.log, "SetRotationPolicy", err)
		}
		p.RotateCommand, p.Verify = rp.GetRotateCommand(), rp.GetVerify()
	}
	c, err := s.b.SetPolicy(ctx, req.GetName(), p, callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "SetRotationPolicy", err)
	}
	return &pb.SetRotationPolicyResponse{Credential: s.credentialOut(c)}, nil
}

// ImportCredential implements AdminService.ImportCredential.
func (s *AdminService) ImportCredential(ctx context.Context, req *pb.ImportCredentialRequest) (*pb.ImportCredentialResponse, error) {
	c, err := s.b.Import(ctx, req.GetName(), req.GetValue(), req.GetSource(), callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "ImportCredential", err)
	}
	return &pb.ImportCredentialResponse{Credential: s.credentialOut(c)}, nil
}

// maxImportBytes bounds what one ImportCredentials stream may make brokerd hold before it
// commits: names and values of every entry (the tutorial's file is at most 1 MiB).
const maxImportBytes = 4 << 20

// ImportCredentials implements AdminService.ImportCredentials: it collects the streamed entries
// and stores them all in one transaction when the stream ends, or none.
func (s *AdminService) ImportCredentials(stream pb.AdminService_ImportCredentialsServer) error {
	var (
		entries []broker.ImportEntry
		source  string
		size    int
	)
	defer func() {
		for _, e := range entries {
			clear(e.Value)
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err // the client went away or sent garbage; gRPC already has the status
		}
		if source == "" {
			source = req.GetSource()
		}
		for _, e := range req.GetEntries() {
			size += len(e.GetName()) + len(e.GetValue())
			if size > maxImportBytes || len(entries) >= broker.MaxImportEntries {
				return toStatus(s.log, "ImportCredentials", fmt.Errorf("%w: import too large: at most %d entries and %d bytes in one import; nothing was imported",
					broker.ErrInvalidArgument, broker.MaxImportEntries, maxImportBytes))
			}
			entries = append(entries, broker.ImportEntry{Name: e.GetName(), Value: e.GetValue()})
		}
	}
	creds, err := s.b.ImportAll(stream.Context(), entries, source, callerFrom(stream.Context()))
	if err != nil {
		return toStatus(s.log, "ImportCredentials", err)
	}
	out := &pb.ImportCredentialsResponse{Credentials: make([]*pb.Credential, len(creds))}
	for i, c := range creds {
		out.Credentials[i] = s.credentialOut(c)
	}
	return stream.SendAndClose(out)
}

// Rekey implements AdminService.Rekey.
func (s *AdminService) Rekey(ctx context.Context, _ *pb.RekeyRequest) (*pb.RekeyResponse, error) {
	res, err := s.b.Rekey(ctx)
	if err != nil {
		return nil, toStatus(s.log, "Rekey", err)
	}
	return &pb.RekeyResponse{
		NewPrimaryKeyId: res.NewPrimaryKeyID, Resumed: res.Resumed, Reencrypted: uint64(res.Reencrypted),
		Total: uint64(res.Total), RemovedKeyIds: res.RemovedKeyIDs,
	}, nil
}

// RewrapMasterKey implements AdminService.RewrapMasterKey.
func (s *AdminService) RewrapMasterKey(ctx context.Context, _ *pb.RewrapMasterKeyRequest) (*pb.RewrapMasterKeyResponse, error) {
	c, err := s.b.RewrapMasterKey(ctx)
	if err != nil {
		return nil, toStatus(s.log, "RewrapMasterKey", err)
	}
	return &pb.RewrapMasterKeyResponse{Source: c.To, Rewrapped: c.Rewrapped, PreviousKeyVersions: c.PreviousKeyVersions, KeyVersion: c.KeyVersion}, nil
}

// MigrateMasterKey implements AdminService.MigrateMasterKey.
func (s *AdminService) MigrateMasterKey(ctx context.Context, req *pb.MigrateMasterKeyRequest) (*pb.MigrateMasterKeyResponse, error) {
	c, err := s.b.MigrateMasterKey(ctx, req.GetTo())
	if err != nil {
		return nil, toStatus(s.log, "MigrateMasterKey", err)
	}
	return &pb.MigrateMasterKeyResponse{From: c.From, To: c.To, KeyVersion: c.KeyVersion, RestartFlag: RestartFlag(c.To)}, nil
}

// RestartFlag is the brokerd flag that names a master key source ("file PATH" or a URI).
func RestartFlag(source string) string {
	if path, ok := strings.CutPrefix(source, "file "); ok {
		return "--master-keyset " + path
	}
	return "--master-key-uri " + source
}
