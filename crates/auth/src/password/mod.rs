//! Password files: the stored hash formats ([`hash`]), the file itself and its editor
//! ([`file`]), and the key of the server's cache of successful verifications ([`digest`]).

pub mod digest;
pub mod file;
pub mod hash;
