// Package kmsuri is what every KMS package under broker/kms shares about key URIs.
package kmsuri

import "strings"

// Redact returns uri fit for an error message or a log line: user info (a `user:password@` typed
// by mistake) and the query and fragment (where a token could be passed) become REDACTED. It works
// on the text, not a parsed URL: an AWS key URI is no valid URL (the ARN's colons are no port),
// and a bad URI is exactly what an error names. Everything up to the last "@" goes, wherever it
// is: a password may hold a "/", "?" or "#", and no key URI brokerd accepts holds an "@", so
// redacting too much costs only a less helpful message.
func Redact(uri string) string {
	scheme, rest, ok := strings.Cut(uri, "://")
	if ok && validScheme(scheme) {
		scheme += "://"
	} else {
		scheme, rest = "", uri // what comes before "://" is no scheme, so may be a password
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = "REDACTED@" + rest[i+1:]
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i+1] + "REDACTED"
	}
	return scheme + rest
}

// validScheme reports whether s is a URI scheme (RFC 3986: a letter, then letters, digits, "+",
// "-" or ".").
func validScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}
