package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// fetchTokenMethod is the one SearchService call that needs no bearer token: its caller is
// identified by attestation.
const fetchTokenMethod = "/credbroker.v1.SearchService/FetchToken"

// AddWorkload implements AdminService.AddWorkload.
func (s *AdminService) AddWorkload(ctx context.Context, req *pb.AddWorkloadRequest) (*pb.AddWorkloadResponse, error) {
	in := req.GetWorkload()
	w := store.Workload{
		Name: in.GetName(), Tools: in.GetTools(), UIDs: in.GetUids(), GIDs: in.GetGids(), Exe: in.GetExe(),
		ExeSHA256: in.GetExeSha256(), Unit: in.GetUnit(), MaxUses: in.GetMaxUses(),
		BudgetCredits: in.GetBudgetCredits(), BudgetPeriod: in.GetBudgetPeriod(), RateLimit: in.GetRateLimit(), Label: in.GetLabel(),
	}
	if err := durations(durationArg{in.GetTtl(), &w.TTL, "ttl"}, durationArg{in.GetRatePeriod(), &w.RatePeriod, "rate_period"}); err != nil {
		return nil, toStatus(s.log, "AddWorkload", err)
	}
	out, err := s.b.AddWorkload(ctx, w, req.GetPinExe(), callerFrom(ctx))
	if err != nil {
		return nil, toStatus(s.log, "AddWorkload", err)
	}
	return &pb.AddWorkloadResponse{Workload: workloadPB(out)}, nil
}

// ListWorkloads implements AdminService.ListWorkloads.
func (s *AdminService) ListWorkloads(context.Context, *pb.ListWorkloadsRequest) (*pb.ListWorkloadsResponse, error) {
	list, err := s.b.ListWorkloads()
	if err != nil {
		return nil, toStatus(s.log, "ListWorkloads", err)
	}
	out := &pb.ListWorkloadsResponse{}
	for _, w := range list {
		out.Workloads = append(out.Workloads, workloadPB(w))
	}
	return out, nil
}

// RemoveWorkload implements AdminService.RemoveWorkload.
func (s *AdminService) RemoveWorkload(ctx context.Context, req *pb.RemoveWorkloadRequest) (*pb.RemoveWorkloadResponse, error) {
	if err := s.b.RemoveWorkload(ctx, req.GetName()); err != nil {
		return nil, toStatus(s.log, "RemoveWorkload", err)
	}
	return &pb.RemoveWorkloadResponse{}, nil
}

func workloadPB(w store.Workload) *pb.Workload {
	out := &pb.Workload{
		Name: w.Name, Tools: w.Tools, Uids: w.UIDs, Gids: w.GIDs, Exe: w.Exe, ExeSha256: w.ExeSHA256, Unit: w.Unit,
		Ttl: durationpb.New(w.TTL), MaxUses: w.MaxUses, BudgetCredits: w.BudgetCredits, BudgetPeriod: w.BudgetPeriod,
		RateLimit: w.RateLimit, Label: w.Label, CreatedAt: timestamppb.New(w.CreatedAt), CreatedByUid: w.CreatedByUID,
	}
	if w.RatePeriod > 0 {
		out.RatePeriod = durationpb.New(w.RatePeriod)
	}
	return out
}

// FetchToken implements SearchService.FetchToken.
func (s *SearchService) FetchToken(ctx context.Context, req *pb.FetchTokenRequest) (*pb.FetchTokenResponse, error) {
	tok, rec, err := s.b.FetchToken(ctx, callerFrom(ctx), req.GetTools())
	if err != nil {
		return nil, toStatus(s.log, "FetchToken", err)
	}
	return &pb.FetchTokenResponse{Token: tok, Id: rec.ID, ExpiresAt: timestamppb.New(rec.ExpiresAt), Workload: rec.Workload, Tools: rec.Tools}, nil
}
