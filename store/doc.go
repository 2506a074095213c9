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
// LoadMasterKeyset). The data keyset (the DEK, an AES-256-GCM Tink keyset) is created with the
// database and stored in it encrypted under the KEK, with the associated data "credbroker/data-keyset".
// Each credential version is encrypted under the data keyset with the associated data
// "credential/<name>/<version>", so a ciphertext moved to another slot fails to decrypt.
//
// # Buckets (schema version 1)
//
//	meta/
//	    version        -> "1" (schema version, decimal ASCII)
//	    data_keyset    -> Tink EncryptedKeyset (binary), encrypted under the master keyset
//	    rekey_target   -> data key id (decimal) an unfinished Rekey is moving versions to (rekey.go)
//	credentials/
//	    <name>/                         one bucket per credential
//	        meta       -> JSON credentialRecord {current, created_at, rotated_at,
//	                      previous, pending, last}
//	        policy     -> JSON Policy {max_age, rotate_command, verify} (absent: no policy)
//	        events     -> JSON [CredentialEvent] the last 50 rotation events (events.go)
//	        versions/
//	            <version, 8-byte big endian> -> JSON versionRecord {created_at, ciphertext,
//	                      created_by_uid, how, verified, state, from}
//	tokens/
//	    <id>           -> JSON tokenRecord (SHA-256 of the secret, scope, limits, use count)
//
// The fields after rotated_at and ciphertext, the policy and events keys and rekey_target were
// added without a schema bump: each is optional and its zero value describes a database written
// before it (a version without "how" was made by put or rotate, i.e. manual). Version numbers only
// grow: a discarded pending version's number is not reused (meta.last), and a rollback stores the
// old value as a new version. At most Options.KeepVersions non-pending versions are kept.
//
// Migrations are an ordered list in migrations.go; Open applies the ones a database lacks and
// refuses a database whose schema is newer than this binary knows.
package store
