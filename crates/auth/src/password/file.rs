//! The password file: one `user:hash` a line, as `mosquitto_passwd` writes it, read whole
//! into a map ([`PasswordFile`]) or edited line by line keeping everything else
//! ([`PasswordFileEditor`], for `tern passwd`).
//!
//! Syntax: lines are split at `\n` (a trailing `\r` is dropped); blank lines and lines whose
//! first non-blank character is `#` are ignored; every other line is `username:hash`, the
//! username and the hash trimmed of blanks. Unlike Mosquitto, which skips a line it cannot
//! read and logs a notice, a line that is not `user:hash`, an empty username or a hash in no
//! known format is an error naming the line: a user silently missing is worse than a file
//! refused (the server keeps the previous file on a failed reload). A user listed twice keeps
//! the first entry, as in Mosquitto, with a warning.

use std::collections::HashMap;
use std::num::NonZeroU32;

use sha2::{Digest, Sha256};

use super::hash::{HashFormatError, HashScheme, StoredHash};
use crate::warning::Warning;

/// Longest username the file accepts: MQTT's UTF-8 string limit.
const MAX_USERNAME_LEN: usize = 65_535;

/// A password file that cannot be used, with the (1-based) line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// What is wrong with a line. Never quotes a hash or a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("expected `username:hash`")]
    NotUserHash,
    #[error("empty username")]
    EmptyUsername,
    #[error("username longer than 65535 bytes")]
    UsernameTooLong,
    #[error("user {user:?}: {error}")]
    Hash {
        user: String,
        error: HashFormatError,
    },
}

/// A parsed password file: username to stored hash.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<Box<str>, StoredHash>,
    /// A hash of the file's most common scheme (its first user's), verified (and refused) for
    /// unknown users: an unknown user costs what most users cost.
    decoy: Option<StoredHash>,
    /// The iteration count most `$scram$` lines have: the SCRAM decoys of unknown users
    /// announce it, as the users around them do.
    scram_iterations: Option<NonZeroU32>,
    /// A key derived from the whole file (as secret as the file): unknown SCRAM users get
    /// decoy salts under it, stable across restarts while the file is unchanged, as real
    /// users' salts are.
    decoy_key: [u8; 32],
    warnings: Vec<Warning>,
}

impl PasswordFile {
    /// Parses the whole file. See the module documentation for the syntax.
    pub fn parse(text: &str) -> Result<PasswordFile, ParseError> {
        let mut file = PasswordFile::default();
        // Per scheme: how many users, and the first one's hash.
        let mut schemes: Vec<(HashScheme, usize, StoredHash)> = Vec::new();
        let mut iterations: HashMap<NonZeroU32, usize> = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let Some((user, hash)) = split_entry(raw).map_err(|kind| ParseError { line, kind })?
            else {
                continue;
            };
            let hash = StoredHash::parse(hash).map_err(|error| ParseError {
                line,
                kind: ParseErrorKind::Hash {
                    user: user.to_owned(),
                    error,
                },
            })?;
            if file.users.contains_key(user) {
                file.warnings.push(Warning {
                    line,
                    message: format!("user {user:?} listed again: this entry is ignored"),
                });
                continue;
            }
            if hash.scheme() == HashScheme::MosquittoSha512 {
                file.warnings.push(Warning {
                    line,
                    message: format!(
                        "user {user:?} has a $6$ hash (one round of SHA-512, weak if the file \
                         leaks): set the password again with `tern passwd` to store argon2id"
                    ),
                });
            }
            let scheme = hash.scheme();
            let seen = schemes.iter_mut().find(|(known, ..)| *known == scheme);
            match seen {
                Some((_, count, _)) => *count += 1,
                None => schemes.push((scheme, 1, hash.clone())),
            }
            if let Some(scram) = hash.scram() {
                *iterations.entry(scram.iterations).or_insert(0usize) += 1;
            }
            file.users.insert(user.into(), hash);
        }
        // Ties go to the scheme met first (`max_by_key` keeps the last maximum: reversed).
        file.decoy = schemes
            .into_iter()
            .rev()
            .max_by_key(|(_, count, _)| *count)
            .map(|(_, _, hash)| hash);
        file.scram_iterations = iterations
            .into_iter()
            .max_by_key(|(iterations, count)| (*count, *iterations))
            .map(|(iterations, _)| iterations);
        file.decoy_key = Sha256::new()
            .chain_update(b"tern: SCRAM decoys of a password file\0")
            .chain_update(text.as_bytes())
            .finalize()
            .into();
        Ok(file)
    }

    /// The scheme of the hash an unknown user is verified against (the file's most common).
    pub fn decoy_scheme(&self) -> Option<HashScheme> {
        self.decoy.as_ref().map(StoredHash::scheme)
    }

    /// The iteration count most of the file's `$scram$` lines have.
    pub fn scram_iterations(&self) -> Option<NonZeroU32> {
        self.scram_iterations
    }

    /// The key of the SCRAM decoys of unknown users (see [`crate::ScramDecoys`]).
    pub fn decoy_key(&self) -> &[u8; 32] {
        &self.decoy_key
    }

    /// The stored hash of `username`, if the file lists it.
    pub fn lookup(&self, username: &str) -> Option<&StoredHash> {
        self.users.get(username)
    }

    /// Whether `password` is `username`'s. An unknown user costs about what a wrong password
    /// costs (the password is verified against the file's first hash, and refused), so the
    /// time of a refusal does not tell which usernames exist. The expensive call: see
    /// [`StoredHash::verify`].
    pub fn check(&self, username: &str, password: &[u8]) -> bool {
        match self.lookup(username) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    let _ = decoy.verify(password);
                }
                false
            }
        }
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The usernames, in no particular order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|user| &**user)
    }

    /// Duplicate users and weak hashes, with their lines: for the server to log at load.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

/// `Ok(None)` for a blank or comment line, `Ok(Some((user, hash)))` for an entry.
fn split_entry(raw: &str) -> Result<Option<(&str, &str)>, ParseErrorKind> {
    let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (user, hash) = line.split_once(':').ok_or(ParseErrorKind::NotUserHash)?;
    let user = user.trim();
    if user.is_empty() {
        return Err(ParseErrorKind::EmptyUsername);
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err(ParseErrorKind::UsernameTooLong);
    }
    Ok(Some((user, hash.trim())))
}

/// A username `tern passwd` may write: one that reads back as itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("the username is empty")]
    Empty,
    #[error("the username is longer than 65535 bytes")]
    TooLong,
    #[error("the username contains `:`, which separates it from the hash")]
    Colon,
    #[error("the username contains a control character")]
    Control,
    #[error("the username begins or ends with a blank, which the file trims")]
    Blank,
    #[error("the username begins with `#`, which marks a comment")]
    Hash,
}

/// Checks that `username` can be written to a password file and read back unchanged.
pub fn validate_username(username: &str) -> Result<(), UsernameError> {
    if username.is_empty() {
        return Err(UsernameError::Empty);
    }
    if username.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::TooLong);
    }
    if username.contains(':') {
        return Err(UsernameError::Colon);
    }
    if username.chars().any(char::is_control) {
        return Err(UsernameError::Control);
    }
    if username.trim() != username {
        return Err(UsernameError::Blank);
    }
    if username.starts_with('#') {
        return Err(UsernameError::Hash);
    }
    Ok(())
}

/// What [`PasswordFileEditor::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Added,
    Updated,
}

/// A password file edited in place: comments, blank lines, other users and their order stay
/// as they were, byte for byte. Lines are matched by the username before the `:`; hashes are
/// not checked here (so a user whose line is broken can be given a new password).
#[derive(Debug, Clone, Default)]
pub struct PasswordFileEditor {
    lines: Vec<String>,
}

impl PasswordFileEditor {
    /// An empty file (`tern passwd -c`).
    pub fn new() -> PasswordFileEditor {
        PasswordFileEditor::default()
    }

    /// Reads an existing file's lines.
    pub fn parse(text: &str) -> PasswordFileEditor {
        let mut lines: Vec<String> = text
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line).to_owned())
            .collect();
        // The newline that ends the last line does not start another.
        if lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        PasswordFileEditor { lines }
    }

    /// Whether the file has an entry for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.lines
            .iter()
            .any(|line| entry_user(line) == Some(username))
    }

    /// Sets `username`'s hash: the first entry for the user is replaced in place (later
    /// duplicates, which the reader ignores, are removed), or a line is appended.
    pub fn set(&mut self, username: &str, hash: &str) -> Result<SetOutcome, UsernameError> {
        validate_username(username)?;
        let entry = format!("{username}:{hash}");
        let mut outcome = SetOutcome::Added;
        self.lines.retain_mut(|line| {
            if entry_user(line) != Some(username) {
                return true;
            }
            if outcome == SetOutcome::Updated {
                return false;
            }
            outcome = SetOutcome::Updated;
            *line = entry.clone();
            true
        });
        if outcome == SetOutcome::Added {
            self.lines.push(entry);
        }
        Ok(outcome)
    }

    /// Removes every entry of `username`; false if there was none.
    pub fn remove(&mut self, username: &str) -> bool {
        let before = self.lines.len();
        self.lines.retain(|line| entry_user(line) != Some(username));
        self.lines.len() != before
    }

    /// The file's text, each line ended by `\n`.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.lines.iter().map(|l| l.len() + 1).sum());
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// The username of an entry line, as the reader sees it.
fn entry_user(line: &str) -> Option<&str> {
    match split_entry(line) {
        Ok(Some((user, _))) => Some(user),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice:$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==";

    #[test]
    fn comments_blank_lines_and_crlf_are_accepted() {
        let text = format!("# users\n\n  # indented comment\r\n{ALICE}\r\n\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.lookup("alice").is_some());
        assert!(file.lookup("bob").is_none());
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        let error = PasswordFile::parse(&format!("{ALICE}\n# c\nbob:hunter2\n")).unwrap_err();
        assert_eq!(error.line, 3);
        let text = error.to_string();
        assert!(text.starts_with("line 3: user \"bob\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let error = PasswordFile::parse("just-a-name\n").unwrap_err();
        assert_eq!((error.line, error.kind), (1, ParseErrorKind::NotUserHash));
        let error = PasswordFile::parse("\n :$6$x$y\n").unwrap_err();
        assert_eq!((error.line, error.kind), (2, ParseErrorKind::EmptyUsername));
    }

    #[test]
    fn a_duplicate_user_keeps_the_first_entry_with_a_warning() {
        let other = "alice:$6$25dgeanU9Qg15m38$4c+6JqK5B2dUibh8Twc/MXqid8klfC8xyr1cgJarXbs0ASjPWZgs6ald25wNvh+ggPzjhwrsFdw5kgY2oezJaA==";
        let file = PasswordFile::parse(&format!("{ALICE}\n{other}\n")).unwrap();
        assert_eq!(
            file.lookup("alice").unwrap().scheme(),
            HashScheme::MosquittoPbkdf2Sha512
        );
        assert_eq!(file.warnings().len(), 1);
        assert_eq!(file.warnings()[0].line, 2);
    }

    #[test]
    fn usernames_that_would_not_read_back_are_refused() {
        for (name, error) in [
            ("", UsernameError::Empty),
            ("a:b", UsernameError::Colon),
            ("a\nb", UsernameError::Control),
            (" a", UsernameError::Blank),
            ("#a", UsernameError::Hash),
        ] {
            assert_eq!(validate_username(name), Err(error), "{name:?}");
        }
        assert_eq!(validate_username("émile d'arc"), Ok(()));
    }

    #[test]
    fn the_editor_keeps_everything_else_byte_for_byte() {
        let text = format!("# head\n{ALICE}\n\nbob:old\n# tail\nbob:older\n");
        let mut editor = PasswordFileEditor::parse(&text);
        assert!(editor.contains("bob"));
        assert_eq!(editor.set("bob", "NEW").unwrap(), SetOutcome::Updated);
        assert_eq!(
            editor.to_text(),
            format!("# head\n{ALICE}\n\nbob:NEW\n# tail\n")
        );
        assert_eq!(editor.set("carol", "C").unwrap(), SetOutcome::Added);
        assert!(editor.remove("alice"));
        assert!(!editor.remove("alice"));
        assert_eq!(editor.to_text(), "# head\n\nbob:NEW\n# tail\ncarol:C\n");
        assert_eq!(editor.set("x:y", "C"), Err(UsernameError::Colon));
    }
}
