//! # tern-auth
//!
//! Who may connect and what they may touch, as pure code: no sockets, no runtime, no files
//! opened here (the server reads the files, runs the expensive calls on a bounded pool, and
//! adapts these types to the broker core's hooks).
//!
//! - [`password`]: password files, one `user:hash` a line. Reads Mosquitto's formats as they
//!   are (`$6$` salted SHA-512, `$7$` PBKDF2-SHA512, `$argon2id$` PHC) so a `mosquitto_passwd`
//!   file works unchanged; new hashes are argon2id ([`hash_argon2id`],
//!   [`Argon2Params::DEFAULT`]). [`PasswordFileEditor`] edits a file keeping its comments and
//!   order (`tern passwd`). [`CredentialDigester`] makes the key of a cache of successful
//!   verifications, never storing the password.
//! - [`acl`]: the access rules in Mosquitto's ACL syntax (`user`, `topic`, `pattern` with `%u`
//!   and `%c`), compiled once ([`Acl`]), specialised per client ([`ClientRules`]), and checked
//!   per topic (`may_read`, `may_write`) or per subscription filter
//!   ([`ClientRules::classify`] → [`FilterAccess`]). Permissions from a JWT's claims or an
//!   HTTP answer use the same engine ([`Acl::from_permissions`]).
//!
//! - [`scram`]: the server side of SCRAM-SHA-256/-512 (RFC 5802, RFC 7677) and the
//!   credentials a password file stores for it (`$scram$`, written by `tern passwd --scram`).
//!
//! The file formats are described for users in `docs/auth.md`.

// Data from the network must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod acl;
pub mod password;
pub mod scram;
mod warning;

pub use acl::{
    Access, Acl, AclError, AclErrorKind, ClientRules, FilterAccess, FilterError, PermissionError,
    Permissions,
};
pub use password::digest::{CredentialDigest, CredentialDigester};
pub use password::file::{
    ParseError, ParseErrorKind, PasswordFile, PasswordFileEditor, SetOutcome, UsernameError,
    validate_username,
};
pub use password::hash::{
    Argon2Params, HashError, HashFormatError, HashScheme, StoredHash, hash_argon2id,
    hash_argon2id_with, hash_scram,
};
pub use scram::{
    ScramCredentials, ScramDecoys, ScramError, ScramKeys, ScramMechanism, ScramServer,
    ScramServerKeys, ScramSession,
};
pub use warning::Warning;
