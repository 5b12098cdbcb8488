//! The admin API's bearer token: read from `[admin] token_file`, or generated there (32 random
//! bytes, hex, mode 0600) the first time the server starts; compared in constant time.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Bytes of randomness in a generated token (64 hex digits).
const GENERATED_BYTES: usize = 32;
/// A token shorter than this is refused: a guessable token on a network port is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the admin token file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the admin token in {path} is too short ({len} characters, at least {MIN_TOKEN_LEN}) or not printable ASCII (write a good one, or delete it and the broker generates a new one at start)"
    )]
    Weak { path: PathBuf, len: usize },
    #[error("no random source for the admin token: {0}")]
    Random(String),
}

impl Token {
    /// A token as given (tests, `tern ctl --token`); `None` when it is too short or has
    /// characters an HTTP header cannot carry.
    pub fn new(token: impl Into<String>) -> Option<Token> {
        let token = token.into();
        (token.len() >= MIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic()))
            .then_some(Token(token))
    }

    /// A fresh token: 32 bytes from the OS's random source, in hex.
    pub fn generate() -> Result<Token, TokenError> {
        let mut bytes = [0u8; GENERATED_BYTES];
        getrandom::fill(&mut bytes).map_err(|error| TokenError::Random(error.to_string()))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// Reads the token in `path` (surrounding whitespace ignored); when the file does not
    /// exist, generates one and writes it there, readable by its owner only.
    pub fn load_or_generate(path: &Path) -> Result<Token, TokenError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                warn_if_readable_by_others(path);
                let text = text.trim();
                Token::new(text).ok_or_else(|| TokenError::Weak {
                    path: path.to_owned(),
                    len: text.len(),
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let token = Token::generate()?;
                write_private(path, &token).map_err(|source| TokenError::Write {
                    path: path.to_owned(),
                    source,
                })?;
                tracing::info!(path = %path.display(), "generated the admin API token");
                Ok(token)
            }
            Err(source) => Err(TokenError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads a token file (`tern ctl --token-file`), without generating one.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = text.trim();
        Token::new(text).ok_or_else(|| TokenError::Weak {
            path: path.to_owned(),
            len: text.len(),
        })
    }
}

/// Creates `path` (not there before) with mode 0600 holding the token, whole or not at all:
/// the token goes to a temporary file beside it (0600, `create_new`), synced, then is linked
/// to `path` (which fails if `path` appeared meanwhile, and never follows a symlink there),
/// and the directory synced. A crash at any point leaves no `path` or a complete one, never an
/// empty token file that would refuse every later start.
fn write_private(path: &Path, token: &Token) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary = parent.join(name);
    let result = write_temporary(&temporary, token).and_then(|()| {
        std::fs::hard_link(&temporary, path)?;
        sync_dir(parent)
    });
    let _ = std::fs::remove_file(&temporary);
    result
}

fn write_temporary(temporary: &Path, token: &Token) -> std::io::Result<()> {
    let open = || {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(temporary)
    };
    let mut file = match open() {
        // Left by a crash of a process that had our pid: ours to replace.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(temporary)?;
            open()?
        }
        other => other?,
    };
    file.write_all(token.as_str().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the admin token file can be read by other users: chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: the token is generated at first start (32 random bytes, hex, 0600) and read
    /// back the same at the next.
    #[test]
    fn generated_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("tern-admin-token-{}", std::process::id()));
        let path = dir.join("sub").join("admin.token");
        let _ = std::fs::remove_dir_all(&dir);
        let first = Token::load_or_generate(&path).unwrap();
        assert_eq!(first.as_str().len(), 64);
        assert!(first.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = Token::load_or_generate(&path).unwrap();
        assert_eq!(first, second);
        assert_eq!(Token::read(&path).unwrap(), first);
        // Review 13 #20: written through a temporary file, none left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("admin.token")]);
        // An empty token file (from before this fix) says how to get a new one.
        std::fs::write(&path, "").unwrap();
        let error = Token::load_or_generate(&path).unwrap_err().to_string();
        assert!(error.contains("delete it"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn short_tokens_refused_and_compare_exact() {
        assert!(Token::new("short").is_none());
        assert!(Token::new("has a space in it!!").is_none());
        let token = Token::new("0123456789abcdef").unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }
}
