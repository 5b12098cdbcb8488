//! A warning about a file that loads but deserves the operator's attention, with its line.

use std::fmt;

/// Something that works but may not do what was meant (a weak hash, a duplicate user, a
/// `pattern` line with nothing to substitute), for the server to log at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line of the file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}
