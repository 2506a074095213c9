package kmsuri

import "testing"

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"hcvault://127.0.0.1:8200/transit/keys/k", "hcvault://127.0.0.1:8200/transit/keys/k"},
		{"hcvault://user:s3cret@127.0.0.1:8200/transit/keys/k", "hcvault://REDACTED@127.0.0.1:8200/transit/keys/k"},
		{"hcvault://127.0.0.1:8200/transit/keys/k?token=s3cret", "hcvault://127.0.0.1:8200/transit/keys/k?REDACTED"},
		{"hcvault://127.0.0.1:8200/transit/keys/k#s3cret", "hcvault://127.0.0.1:8200/transit/keys/k#REDACTED"},
		{"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd", "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd"},
		{"aws-kms://AKIA:s3cret@arn:aws:kms:eu-west-1:111122223333:key/1234abcd", "aws-kms://REDACTED@arn:aws:kms:eu-west-1:111122223333:key/1234abcd"},
		{"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd?secret=s3cret", "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd?REDACTED"},
		// An "@" anywhere ends what is redacted (no accepted key URI holds one).
		{"aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/a@b", "aws-kms://REDACTED@b"},
		{"gcp-kms://u:s3cret@projects/p/locations/l/keyRings/r/cryptoKeys/k", "gcp-kms://REDACTED@projects/p/locations/l/keyRings/r/cryptoKeys/k"},
		{"gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k?access_token=s3cret", "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k?REDACTED"},
		// Passwords holding what ends the other parts.
		{"gcp-kms://u:s3@cr?et@projects/p", "gcp-kms://REDACTED@projects/p"},
		{"hcvault://u:s3/cret@host/transit/keys/k", "hcvault://REDACTED@host/transit/keys/k"},
		{"hcvault://u:s3#cret@host/transit/keys/k?x=1", "hcvault://REDACTED@host/transit/keys/k?REDACTED"},
		// No scheme, or what stands before "://" is none.
		{"u:s3cret@x://host/k", "REDACTED@x://host/k"},
		{"s3cret://host/k", "s3cret://host/k"},
		{"user:s3cret@host/transit/keys/k", "REDACTED@host/transit/keys/k"},
		{"transit/keys/k", "transit/keys/k"},
		{"", ""},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
