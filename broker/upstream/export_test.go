package upstream

// StdlibForms is every form of key redaction looks for, built with the standard library's
// encoders (redact_internal_test.go), for the external tests to echo back.
func StdlibForms(key []byte) []string { return stdlibForms(key) }
