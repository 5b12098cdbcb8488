//! `tern passwd`: add, change or delete a user of a password file, with `mosquitto_passwd`'s
//! flags (`-c` create, `-b` batch, `-D` delete), writing argon2id hashes, or with `--scram`
//! SCRAM-SHA-256/512 credentials (`$scram$`, which also verify a plain password). Other lines
//! (comments, other users, Mosquitto's `$6$`/`$7$` hashes) stay as they were. The file is
//! written whole to a temporary file beside it with mode 0600, synced, then renamed over the
//! old one, so a reader (the broker's reload) sees the old file or the new one, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tern_auth::scram::DEFAULT_ITERATIONS;
use tern_auth::{PasswordFileEditor, SetOutcome, hash_argon2id, hash_scram, validate_username};

#[derive(clap::Args)]
#[command(
    after_help = "Without -b, the password is asked twice on the terminal, not echoed; \
    when standard input is not a terminal, it is read as two lines from it."
)]
pub struct PasswdArgs {
    /// Create the file, replacing an existing one (as `mosquitto_passwd -c`).
    #[arg(short = 'c', long = "create", conflicts_with = "delete")]
    pub create: bool,
    /// Batch mode: the password is the third argument. It is then visible to other users
    /// of the machine in the process list and kept in shell history.
    #[arg(short = 'b', long = "batch", conflicts_with = "delete")]
    pub batch: bool,
    /// Delete USER from the file.
    #[arg(short = 'D', long = "delete")]
    pub delete: bool,
    /// Store SCRAM-SHA-256 and SCRAM-SHA-512 credentials (`$scram$...`) instead of an argon2id
    /// hash: for MQTT 5 clients that authenticate with SCRAM (the line also verifies a plain
    /// CONNECT password). The password must be printable ASCII.
    #[arg(long = "scram", conflicts_with = "delete")]
    pub scram: bool,
    /// PBKDF2 iterations of the SCRAM credentials (RFC 7677's minimum, 4096, by default).
    #[arg(long = "iterations", requires = "scram", value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,
    /// The password file.
    pub file: PathBuf,
    /// The username.
    pub user: String,
    /// The password, with -b only.
    pub password: Option<String>,
}

/// Runs `tern passwd`.
pub fn main(args: PasswdArgs) -> anyhow::Result<()> {
    if args.delete {
        if args.password.is_some() {
            bail!("-D takes no password");
        }
        let mut editor = PasswordFileEditor::parse(&read(&args.file)?);
        if !editor.remove(&args.user) {
            bail!("user {:?} is not in {}", args.user, args.file.display());
        }
        return write_atomically(&args.file, &editor.to_text());
    }
    validate_username(&args.user).map_err(|error| anyhow!("{error}"))?;
    let password = match (args.batch, args.password) {
        (true, Some(password)) => password,
        (true, None) => bail!("-b needs the password after the username"),
        (false, Some(_)) => bail!("a password on the command line needs -b"),
        (false, None) => prompt_password()?,
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let mut editor = if args.create {
        PasswordFileEditor::new()
    } else {
        PasswordFileEditor::parse(&read(&args.file)?)
    };
    let hash = if args.scram {
        let iterations = std::num::NonZeroU32::new(args.iterations.unwrap_or(DEFAULT_ITERATIONS))
            .context("the iteration count must be at least 1")?;
        if iterations.get() < DEFAULT_ITERATIONS {
            eprintln!("warning: fewer than {DEFAULT_ITERATIONS} iterations (RFC 7677's minimum)");
        }
        hash_scram(password.as_bytes(), iterations).map_err(|error| anyhow!("{error}"))?
    } else {
        hash_argon2id(password.as_bytes())?
    };
    let outcome = editor
        .set(&args.user, &hash)
        .map_err(|error| anyhow!("{error}"))?;
    write_atomically(&args.file, &editor.to_text())?;
    let verb = match outcome {
        SetOutcome::Added => "added",
        SetOutcome::Updated => "updated",
    };
    eprintln!("{}: {verb} user {:?}", args.file.display(), args.user);
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            bail!("{}: no such file (-c creates it)", path.display())
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Asks twice; the two must match.
fn prompt_password() -> anyhow::Result<String> {
    let first = read_secret("Password: ")?;
    let second = read_secret("Reenter password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// One line from standard input, not echoed when it is a terminal.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = io::stdin();
    let terminal = stdin.is_terminal();
    let mut stderr = io::stderr();
    if terminal {
        write!(stderr, "{prompt}")?;
        stderr.flush()?;
    }
    let echo_off = if terminal {
        Some(echo::EchoOff::new().context("cannot turn the terminal's echo off")?)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(echo_off);
    if terminal {
        // The Enter key was not echoed either.
        writeln!(stderr)?;
    }
    if read.context("cannot read the password")? == 0 {
        bail!("no password given (end of input)");
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_owned())
}

#[cfg(unix)]
mod echo {
    use rustix::termios::{self, LocalModes, OptionalActions, Termios};

    /// The terminal on standard input with echo off, restored on drop.
    pub struct EchoOff {
        saved: Termios,
    }

    impl EchoOff {
        pub fn new() -> std::io::Result<EchoOff> {
            let stdin = std::io::stdin();
            let saved = termios::tcgetattr(&stdin)?;
            let mut quiet = saved.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            termios::tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
            Ok(EchoOff { saved })
        }
    }

    impl Drop for EchoOff {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }
}

#[cfg(not(unix))]
mod echo {
    pub struct EchoOff;

    impl EchoOff {
        pub fn new() -> std::io::Result<EchoOff> {
            Err(std::io::Error::other(
                "no way to hide the password on this system: use -b",
            ))
        }
    }
}

/// A temporary file removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `text` to `path` through a temporary file (mode 0600) renamed over it.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = TempFile {
        path: dir.join(format!(
            ".{}.tern-passwd-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        kept: false,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temp.path)
        .with_context(|| format!("cannot create {}", temp.path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.path.display()))?;
    drop(file);
    fs::rename(&temp.path, path).with_context(|| format!("cannot replace {}", path.display()))?;
    temp.kept = true;
    // Make the rename itself durable; a failure here leaves a complete file either way.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}
