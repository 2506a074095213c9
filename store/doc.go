// Package store keeps credbroker's state in one bbolt file, with every credential value encrypted by
// Google Tink before it reaches the disk.
//
// It knows bytes on disk and Tink, nothing about gRPC, tokens' wire format or policy. It must never
// write a plaintext credential value, a token secret (only its SHA-256) or the data keyset in the
// clear, and it must never hand out a byte slice that aliases bbolt's memory map.
//
// # Envelope encryption
//
// The master keyset (the KEK, a Tink AEAD keyset) comes from a file outside the database (see
// LoadMasterKeyset), or is any tink.AEAD, e.g. a KMS key (broker/kms; this package holds no KMS
// code). The data keyset (the DEK, an AES-256-GCM Tink keyset) is created with the
// database and stored in it encrypted under the KEK, with the associated data "credbroker/data-keyset".
// Each credential version is encrypted under the data keyset with the associated data
// "credential/<name>/<version>", so a ciphertext moved to another slot fails to decrypt.
//
// # Record MACs
//
// Every value in tokens/, workloads/ and under credentials/ is sealed (records.go): 0x01, the audit seq it
// was stamped with (8 bytes), a 1-byte tag length, a Tink HMAC-SHA256 tag under the record keyset
// over (bucket path, key, stamp, body), then the JSON body listed below. Every read verifies the
// tag and refuses a record that fails with ErrTampered; Open checks every record and refuses the
// database if one fails, or if one is stamped later than the audit chain head (a head put back
// to an older value). New record keys under these buckets must be written with putRecord/seal,
// or Open will refuse the database. The schema 1 -> 2 migration seals the records it finds,
// stamped 0: that is the trust-on-first-use point.
//
// # Buckets (schema version 2)
//
//	meta/
//	    version        -> "2" (schema version, decimal ASCII)
//	    data_keyset    -> Tink EncryptedKeyset (binary), encrypted under the master keyset
//	    audit_keyset   -> the audit MAC keyset, likewise (audit.go)
//	    record_keyset  -> the record MAC keyset, likewise (records.go; since schema 2)
//	    audit_head, audit_anchor -> MACed audit chain points (audit.go)
//	    rekey_target   -> data key id (decimal) an unfinished Rekey is moving versions to (rekey.go)
//	    kek_source     -> "file PATH" or the KMS key URI the keysets above are wrapped under, a label
//	                      for error messages (kek.go; absent: a keyset file)
//	credentials/
//	    <name>/                         one bucket per credential
//	        meta       -> JSON credentialRecord {current, created_at, rotated_at,
//	                      previous, pending, last}
//	        policy     -> JSON Policy {max_age, rotate_command, verify} (absent: no policy)
//	        events     -> JSON [CredentialEvent] the last 50 rotation events (events.go)
//	        limits     -> JSON Limits; credits -> the monthly credit counter (limits.go)
//	        versions/
//	            <version, 8-byte big endian> -> JSON versionRecord {created_at, ciphertext,
//	                      created_by_uid, how, verified, state, from}
//	tokens/
//	    <id>           -> JSON tokenRecord (SHA-256 of the secret, scope, limits, use count)
//	workloads/      (created by the first registration; absent means none)
//	    <name>         -> JSON Workload: selectors (uids, gids, exe, exe_sha256, unit), tools, limits
//	audit/
//	    <seq, 8-byte big endian> -> MAC || JSON AuditRecord, a hash chain (audit.go)
//
// The fields after rotated_at and ciphertext, the policy and events keys, rekey_target and kek_source were
// added without a schema bump: each is optional and its zero value describes a database written
// before it (a version without "how" was made by put or rotate, i.e. manual). Version numbers only
// grow: a discarded pending version's number is not reused (meta.last), and a rollback stores the
// old value as a new version. At most Options.KeepVersions non-pending versions are kept.
//
// Migrations are an ordered list in migrations.go; Open applies the ones a database lacks and
// refuses a database whose schema is newer than this binary knows.
package store
