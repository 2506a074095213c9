package grpcapi

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// AdminService adapts broker.Broker to credbroker.v1.AdminService. Authorization happens in the
// Admins interceptor before any handler runs.
type AdminService struct {
	pb.UnimplementedAdminServiceServer
	b   *broker.Broker
	log *slog.Logger
	// stopping is closed when brokerd starts to shut down (Health.Shutdown); watches end then.
	stopping <-chan struct{}
}

func credentialPB(c store.Credential) *pb.Credential {
	out := &pb.Credential{Name: c.Name, Version: c.Version, CreatedAt: timestamppb.New(c.CreatedAt), RotatedAt: timestamppb.New(c.RotatedAt),
		CreditsThisMonth: c.CreditsThisMonth}
	if l := c.Limits; l != nil {
		out.Limits = &pb.CredentialLimits{RateLimit: l.RateLimit, Burst: l.Burst, MonthlyCredits: l.MonthlyCredits}
		if l.RatePeriod > 0 {
			out.Limits.RatePeriod = durationpb.New(l.RatePeriod)
		}
		if l.MaxWait > 0 {
			out.Limits.MaxWait = durationpb.New(l.MaxWait)
		}
	}
	return out
}

func tokenPB(t store.Token) *pb.TokenInfo {
	out := &pb.TokenInfo{
		Id: t.ID, Tools: t.Tools, CreatedAt: timestamppb.New(t.CreatedAt), ExpiresAt: timestamppb.New(t.ExpiresAt),
		MaxUses: t.MaxUses, Uses: t.Uses, BindUid: t.BindUID, Label: t.Label, Revoked: t.Revoked,
		MintedByUid: t.MintedByUID,
	}
	if !t.RevokedAt.IsZero() {
		out.RevokedAt = timestamppb.New(t.RevokedAt)
	}
	if !t.LastUsedAt.IsZero() {
		out.LastUsedAt = timestamppb.New(t.LastUsedAt)
	}
	if t.RateLimit > 0 {
		out.RateLimit, out.RatePeriod = t.RateLimit, durationpb.New(t.RatePeriod)
	}
	if t.MaxUses > t.Uses {
		out.UsesLeft = t.MaxUses - t.Uses
	}
	out.BudgetCredits, out.BudgetPeriod, out.SharedCache = t.BudgetCredits, t.BudgetPeriod, t.SharedCache
	if t.BudgetWindow == store.DayWindow(time.Now()) || t.BudgetWindow == store.MonthWindow(time.Now()) {
		out.BudgetSpent = t.BudgetSpent
	}
	return out
}

// PutCredential implements AdminService.PutCredential.
func (s *AdminService) PutCredential(ctx context.Context, req *pb.PutCredentialRequest) (*pb.PutCredentialResponse, error) {
	c, err := s.b.PutCredentialAs(ctx, req.GetName(), req.GetValue(), callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "PutCredential", err)
	}
	return &pb.PutCredentialResponse{Credential: s.credentialOut(c)}, nil
}

// RotateCredential implements AdminService.RotateCredential.
func (s *AdminService) RotateCredential(ctx context.Context, req *pb.RotateCredentialRequest) (*pb.RotateCredentialResponse, error) {
	c, err := s.b.Rotate(ctx, req.GetName(), req.GetValue(), broker.RotateOptions{Caller: callerFrom(ctx), Verify: req.GetVerify()})
	if err != nil {
		return nil, toStatus(s.log, "RotateCredential", err)
	}
	return &pb.RotateCredentialResponse{Credential: s.credentialOut(c)}, nil
}

// ListCredentials implements AdminService.ListCredentials.
func (s *AdminService) ListCredentials(context.Context, *pb.ListCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	list, err := s.b.ListCredentials()
	if err != nil {
		return nil, toStatus(s.log, "ListCredentials", err)
	}
	out := &pb.ListCredentialsResponse{}
	for _, c := range list {
		out.Credentials = append(out.Credentials, s.credentialOut(c))
	}
	return out, nil
}

// DeleteCredential implements AdminService.DeleteCredential.
func (s *AdminService) DeleteCredential(ctx context.Context, req *pb.DeleteCredentialRequest) (*pb.DeleteCredentialResponse, error) {
	if err := s.b.DeleteCredential(ctx, req.GetName()); err != nil {
		return nil, toStatus(s.log, "DeleteCredential", err)
	}
	return &pb.DeleteCredentialResponse{}, nil
}

// MintToken implements AdminService.MintToken.
func (s *AdminService) MintToken(ctx context.Context, req *pb.MintTokenRequest) (*pb.MintTokenResponse, error) {
	r := broker.MintRequest{Tools: req.GetTools(), MaxUses: req.GetMaxUses(), BindUID: req.BindUid, Label: req.GetLabel(), RateLimit: req.GetRateLimit(),
		BudgetCredits: req.GetBudgetCredits(), BudgetPeriod: req.GetBudgetPeriod(), SharedCache: req.GetSharedCache()}
	if err := durations(durationArg{req.GetTtl(), &r.TTL, "ttl"}, durationArg{req.GetRatePeriod(), &r.RatePeriod, "rate_period"}); err != nil {
		return nil, toStatus(s.log, "MintToken", err)
	}
	mint := s.b.MintToken
	if req.GetBindProcess() {
		mint = s.b.MintBoundToProcess
	}
	tok, rec, err := mint(ctx, r, callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "MintToken", err)
	}
	return &pb.MintTokenResponse{Token: tok, Id: rec.ID, ExpiresAt: timestamppb.New(rec.ExpiresAt)}, nil
}

// ListTokens implements AdminService.ListTokens.
func (s *AdminService) ListTokens(_ context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	list, next, err := s.b.ListTokens(int(req.GetPageSize()), req.GetPageToken(), req.GetIncludeExpired())
	if err != nil {
		return nil, toStatus(s.log, "ListTokens", err)
	}
	out := &pb.ListTokensResponse{NextPageToken: next}
	for _, t := range list {
		out.Tokens = append(out.Tokens, tokenPB(t))
	}
	return out, nil
}

// RevokeToken implements AdminService.RevokeToken.
func (s *AdminService) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	t, err := s.b.RevokeToken(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(s.log, "RevokeToken", err)
	}
	return &pb.RevokeTokenResponse{Token: tokenPB(t)}, nil
}

// Status implements AdminService.Status.
func (s *AdminService) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := s.b.Status()
	if err != nil {
		return nil, toStatus(s.log, "Status", err)
	}
	out := &pb.StatusResponse{
		Version: st.Version, StartedAt: timestamppb.New(st.StartedAt), Uptime: durationpb.New(st.Uptime),
		Credentials: uint32(st.Credentials), LiveTokens: uint32(st.LiveTokens),
		SchemaVersion: uint32(st.SchemaVersion), Tools: st.Tools,
	}
	rotationStatusPB(out, st.RotationInfo)
	out.MasterKeySource, out.MasterKeyVersions = st.MasterKey.Source, st.MasterKey.KeyVersions
	if !st.MasterKey.LastKMSContact.IsZero() {
		out.MasterKeyLastKmsContact = timestamppb.New(st.MasterKey.LastKMSContact)
	}
	for _, c := range st.Limited {
		out.LimitedCredentials = append(out.LimitedCredentials, credentialPB(c))
	}
	for _, w := range st.Workloads {
		out.Workloads = append(out.Workloads, workloadPB(w))
	}
	return out, nil
}

// GetToken implements AdminService.GetToken.
func (s *AdminService) GetToken(ctx context.Context, req *pb.GetTokenRequest) (*pb.GetTokenResponse, error) {
	d, err := s.b.GetToken(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(s.log, "GetToken", err)
	}
	d.Token.LastUsedAt = d.LastUsed
	return &pb.GetTokenResponse{Token: tokenPB(d.Token)}, nil
}

// ListAudit implements AdminService.ListAudit.
func (s *AdminService) ListAudit(_ context.Context, req *pb.ListAuditRequest) (*pb.ListAuditResponse, error) {
	var since time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	recs, err := s.b.ListAudit(req.GetAfterSeq(), since, int(req.GetPageSize()))
	if err != nil {
		return nil, toStatus(s.log, "ListAudit", err)
	}
	return &pb.ListAuditResponse{Records: auditPB(recs)}, nil
}

func auditPB(recs []store.AuditRecord) []*pb.AuditRecord {
	out := make([]*pb.AuditRecord, 0, len(recs))
	for _, r := range recs {
		out = append(out, &pb.AuditRecord{
			Seq: r.Seq, Time: timestamppb.New(r.Time), PeerKnown: r.PeerKnown, Uid: r.UID, Gid: r.GID, Pid: r.PID,
			TokenId: r.TokenID, Method: r.Method, Tool: r.Tool, Code: r.Code,
			Latency: durationpb.New(time.Duration(r.LatencyMicros) * time.Microsecond), Credential: r.Credential,
			CredentialVersion: r.CredentialVersion, QueryLen: uint32(r.QueryLen), QueryMac: r.QueryMAC, Event: r.Event,
			Credits: r.Credits, CreditsSaved: r.CreditsSaved, TokenLabel: r.TokenLabel, Pidfd: r.PIDFD, Exe: r.Exe, Comm: r.Comm,
			Count: r.Count, Workload: r.Workload,
		})
	}
	return out
}

// WatchAudit implements AdminService.WatchAudit. The watch is audited when it starts (here, after
// authorization, so a refused caller gets one record and not a "started" one too) and when it ends
// (the stream interceptor); the records it sends are not audited, or a follower would grow the log
// it follows by a record per record.
func (s *AdminService) WatchAudit(req *pb.WatchAuditRequest, stream grpc.ServerStreamingServer[pb.WatchAuditResponse]) error {
	ctx := stream.Context()
	var since time.Time
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return toStatus(s.log, "WatchAudit", fmt.Errorf("%w: since is not a valid time", broker.ErrInvalidArgument))
		}
		since = req.GetSince().AsTime()
	}
	started := broker.CallRecord{Method: watchAuditMethod, Caller: callerFrom(ctx), Code: "Started", Info: &broker.CallInfo{Event: "watch"}}
	if err := s.b.RecordCall(ctx, started); err != nil {
		s.log.Error("audit record not written; refusing the watch", "err", err)
		return errAuditRefused()
	}
	// End the watch when brokerd starts stopping: a graceful stop waits for every open stream.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := s.b.WatchAudit(ctx, req.GetAfterSeq(), since, func(recs []store.AuditRecord) error {
		return stream.Send(&pb.WatchAuditResponse{Records: auditPB(recs)})
	})
	select {
	case <-s.stopping:
		return refuse(codes.Unavailable, broker.ReasonShuttingDown, "brokerd is stopping; watch again when it is back", 0, nil)
	default:
	}
	return toStatus(s.log, "WatchAudit", err)
}

const watchAuditMethod = adminPrefix + "WatchAudit"

// VerifyAudit implements AdminService.VerifyAudit.
func (s *AdminService) VerifyAudit(context.Context, *pb.VerifyAuditRequest) (*pb.VerifyAuditResponse, error) {
	v, err := s.b.VerifyAudit()
	if err != nil {
		return nil, toStatus(s.log, "VerifyAudit", err)
	}
	return &pb.VerifyAuditResponse{
		Ok: v.OK, Checked: uint64(v.Checked), FirstSeq: v.FirstSeq, LastSeq: v.LastSeq, BadSeq: v.BadSeq, Problem: v.Problem,
	}, nil
}

// SetCredentialLimits implements AdminService.SetCredentialLimits.
func (s *AdminService) SetCredentialLimits(ctx context.Context, req *pb.SetCredentialLimitsRequest) (*pb.SetCredentialLimitsResponse, error) {
	var l store.Limits
	if in := req.GetLimits(); in != nil {
		l = store.Limits{RateLimit: in.GetRateLimit(), Burst: in.GetBurst(), MonthlyCredits: in.GetMonthlyCredits()}
		if err := durations(durationArg{in.GetRatePeriod(), &l.RatePeriod, "rate_period"}, durationArg{in.GetMaxWait(), &l.MaxWait, "max_wait"}); err != nil {
			return nil, toStatus(s.log, "SetCredentialLimits", err)
		}
	}
	c, err := s.b.SetLimits(ctx, req.GetName(), l)
	if err != nil {
		return nil, toStatus(s.log, "SetCredentialLimits", err)
	}
	return &pb.SetCredentialLimitsResponse{Credential: s.credentialOut(c)}, nil
}

// Usage implements AdminService.Usage.
func (s *AdminService) Usage(_ context.Context, req *pb.UsageRequest) (*pb.UsageResponse, error) {
	var since time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	rows, saved, err := s.b.Usage(req.GetBy(), since)
	if err != nil {
		return nil, toStatus(s.log, "Usage", err)
	}
	out := &pb.UsageResponse{CreditsSaved: saved}
	for _, r := range rows {
		out.Rows = append(out.Rows, &pb.UsageRow{Key: r.Key, Label: r.Label, Calls: r.Calls, Credits: r.Credits, CacheHits: r.CacheHits, Errors: r.Err})
	}
	return out, nil
}

// durationArg is a Duration field of a request and where its value goes.
type durationArg struct {
	pb  *durationpb.Duration
	out *time.Duration
	f   string
}

// durations converts the set Duration fields, refusing invalid ones and ones too long for a
// time.Duration (about 292 years), which AsDuration would silently clamp.
func durations(args ...durationArg) error {
	for _, d := range args {
		if d.pb == nil {
			continue
		}
		if err := d.pb.CheckValid(); err != nil {
			return fmt.Errorf("%w: %s is not a valid duration", broker.ErrInvalidArgument, d.f)
		}
		if d.pb.GetSeconds() > math.MaxInt64/int64(time.Second)-1 || d.pb.GetSeconds() < math.MinInt64/int64(time.Second)+1 {
			return fmt.Errorf("%w: %s is out of range (at most about 290 years)", broker.ErrInvalidArgument, d.f)
		}
		*d.out = d.pb.AsDuration()
	}
	return nil
}
