//! Running the built `lowmem` binary from a test.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::workspace_root;

/// `Cli::new(env!("CARGO_BIN_EXE_lowmem"))`: the binary is only known inside the root
/// package's tests, so the macro expands there.
#[macro_export]
macro_rules! lowmem_cli {
    () => {
        $crate::Cli::new(env!("CARGO_BIN_EXE_lowmem"))
    };
}

/// The `lowmem` binary, run in the workspace root (so relative paths such as
/// `ir/examples/mlp.json` work).
#[derive(Clone, Debug)]
pub struct Cli {
    bin: PathBuf,
}

impl Cli {
    pub fn new(bin: impl Into<PathBuf>) -> Cli {
        Cli { bin: bin.into() }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// An invocation to add arguments to (for mixed `&str` and path arguments).
    pub fn cmd(&self) -> Invocation {
        let mut c = Command::new(&self.bin);
        c.current_dir(workspace_root());
        Invocation(c)
    }

    /// Runs `lowmem args...` (see [`Cli::cmd`] for arguments that are paths).
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).run()
    }

    /// Runs `lowmem args...`, asserts it succeeded and returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).assert_ok().stdout.clone()
    }

    /// Runs `lowmem args...`, asserts it failed cleanly (see [`Run::assert_fails_with`])
    /// and returns its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str], needles: &[&str]) -> String {
        self.run(args).assert_fails_with(needles).stderr.clone()
    }
}

/// One `lowmem` command line under construction.
#[derive(Debug)]
pub struct Invocation(Command);

impl Invocation {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Invocation {
        self.0.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Invocation
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    /// Runs in `dir` instead of the workspace root.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Invocation {
        self.0.current_dir(dir);
        self
    }

    #[track_caller]
    pub fn run(mut self) -> Run {
        let out = self
            .0
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.0.get_program()));
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What one run of `lowmem` did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts the run succeeded; the message carries stdout and stderr.
    #[track_caller]
    pub fn assert_ok(&self) -> &Run {
        assert!(
            self.status.success(),
            "lowmem failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts a clean failure: exit code 1 (not a panic's 101), no panic message, and stderr
    /// containing each of `needles`.
    #[track_caller]
    pub fn assert_fails_with(&self, needles: &[&str]) -> &Run {
        let err = &self.stderr;
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected a clean failure, stderr: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}: {err}");
        }
        self
    }
}
