// Package broker holds credbroker's policy: which tool spends which credential at which upstream
// endpoint, how tokens are minted and checked, and the upstream call made on a caller's behalf.
//
// It must never return, log or wrap a credential value or a token secret: errors carry names and
// ids only, and an upstream body never reaches an error message. Mapping its errors to gRPC codes is
// the job of broker/grpcapi, in one place.
package broker
