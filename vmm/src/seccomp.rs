//! Seccomp filters: one allow-list per kind of thread.
//!
//! The built-in filters are written in `vmm/seccomp/x86_64.json` (seccompiler's JSON format,
//! each syscall with a comment saying why it is there) and compiled to BPF by `build.rs`, so a
//! broken filter fails the build. `--seccomp-filter FILE` replaces them with a JSON file in the
//! same format, compiled when tessera starts; `--no-seccomp` installs none.
//!
//! Each thread installs its own filter: the API thread and every vCPU thread as the first thing
//! they do, the VMM thread as the last step of the boot, once the vCPU threads exist (a filter
//! is inherited by threads created later, and stacked filters would force the VMM's list to allow
//! `KVM_RUN`). A syscall outside the list raises SIGSYS; its handler writes one log line naming
//! the syscall and the thread kind, then ends the process with [`EXIT_BAD_SYSCALL`]
//! (Firecracker's code for the same event).

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use seccompiler::{BpfProgram, TargetArch};

/// The process exit code after a forbidden syscall (Firecracker's).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// The built-in filters, compiled by build.rs from seccomp/x86_64.json.
mod builtin {
    use seccompiler::sock_filter;
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SeccompError {
    /// cannot read --seccomp-filter {path}: {source}
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// --seccomp-filter {path}: {message}
    Compile { path: PathBuf, message: String },
    /// cannot install the {kind} seccomp filter: {message}
    Install { kind: ThreadKind, message: String },
    /// cannot install the SIGSYS handler: {0}
    Handler(std::io::Error),
}

/// The kinds of thread that get a filter, named as in the JSON file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop with the devices, and the API's actions.
    Vmm,
    /// The REST API thread.
    Api,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The filters this process installs; cheap to clone (vCPU threads each take one).
#[derive(Debug, Clone)]
pub struct Filters {
    /// vmm, api, vcpu, in [`ThreadKind::ALL`] order; `None` with `--no-seccomp`.
    programs: Option<Arc<[BpfProgram; 3]>>,
    /// From `--seccomp-filter`: it may not allow what the built-in VMM filter does.
    custom: bool,
}

impl Filters {
    /// Tessera's own filters.
    pub fn builtin() -> Self {
        Self::from_programs([
            builtin::VMM.to_vec(),
            builtin::API.to_vec(),
            builtin::VCPU.to_vec(),
        ])
    }

    /// No filters at all (`--no-seccomp`).
    pub fn none() -> Self {
        Self {
            programs: None,
            custom: false,
        }
    }

    /// Compiles a JSON file in seccompiler's format with exactly the filters `vmm`, `api` and
    /// `vcpu` (`--seccomp-filter`).
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let compile_error = |message: String| SeccompError::Compile {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut map = seccompiler::compile_from_json(file, TargetArch::x86_64)
            .map_err(|e| compile_error(e.to_string()))?;
        let mut take = |kind: ThreadKind| {
            map.remove(kind.name())
                .ok_or_else(|| compile_error(format!("no filter for the \"{kind}\" thread")))
        };
        let programs = [
            take(ThreadKind::Vmm)?,
            take(ThreadKind::Api)?,
            take(ThreadKind::Vcpu)?,
        ];
        if let Some(extra) = map.keys().min() {
            return Err(compile_error(format!(
                "unknown thread kind \"{extra}\" (the kinds are vmm, api and vcpu)"
            )));
        }
        Ok(Self {
            custom: true,
            ..Self::from_programs(programs)
        })
    }

    fn from_programs(programs: [BpfProgram; 3]) -> Self {
        Self {
            programs: Some(Arc::new(programs)),
            custom: false,
        }
    }

    /// Whether the VMM thread may start the teardown keeper (`runtime::teardown`): the
    /// built-in filter allows its system calls; a `--seccomp-filter` file may not.
    pub fn allow_teardown_keeper(&self) -> bool {
        !self.custom
    }

    /// Whether any filter is installed (false with `--no-seccomp`).
    pub fn enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// Readies the calling API or vCPU thread: it leaves the process's signals to the VMM
    /// thread (a vCPU keeps its pause kick), then installs its filter.
    pub fn confine_worker(&self, kind: ThreadKind) -> Result<(), String> {
        let keep = match kind {
            ThreadKind::Vcpu => vec![crate::runtime::pause::kick_signal()],
            ThreadKind::Api | ThreadKind::Vmm => Vec::new(),
        };
        crate::runtime::signals::leave_to_vmm_thread(&keep)
            .map_err(|e| format!("cannot block signals on the {kind} thread: {e}"))?;
        self.apply(kind).map_err(|e| e.to_string())
    }

    /// Installs the filter for `kind` on the calling thread, for good.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(programs) = &self.programs else {
            return Ok(());
        };
        let index = ThreadKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        prepare_process()?;
        THREAD_KIND.with(|k| k.set(kind.name()));
        seccompiler::apply_filter(&programs[index]).map_err(|e| SeccompError::Install {
            kind,
            message: e.to_string(),
        })
    }
}

thread_local! {
    /// The filter this thread runs under, for the SIGSYS handler's line.
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// The most malloc arenas (glibc's default is 8 per core); threads beyond share them.
const MALLOC_ARENAS: i32 = 16;

/// Readies the process for its first filter: the SIGSYS handler, no heap trimming and a fixed
/// arena count.
///
/// glibc probes /proc/sys/vm/overcommit_memory (openat, read, close) the first time it trims a
/// thread's heap, and reads /sys/devices/system/cpu/online before its ninth arena, on whichever
/// thread allocates or frees; no vCPU or API filter should allow `openat` for that. With
/// trimming off the probe never runs; free memory at the top of a heap is kept for reuse rather
/// than given back, which costs a VMM with small heaps next to nothing.
fn prepare_process() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: mallopt only changes malloc's tuning: -1 means "never trim", and a fixed
        // arena limit spares glibc reading /sys/devices/system/cpu/online when it would make
        // its ninth arena.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
        // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function with the
        // SA_SIGINFO signature, and only the SIGSYS disposition changes.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    result.map_err(|errno| SeccompError::Handler(std::io::Error::from_raw_os_error(errno)))
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;
/// Byte offset of `_sigsys._syscall` in x86_64's `siginfo_t` (after si_signo, si_errno,
/// si_code, padding and the `_call_addr` pointer); the libc crate has no accessor for it.
const SI_SYSCALL_OFFSET: usize = 24;

/// Runs on the thread that made the forbidden syscall, under its filter: it uses only
/// `clock_gettime` and `write` (both in every built-in list) and `exit_group`, and allocates
/// nothing.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for si_code
    // SYS_SECCOMP the `_sigsys` member is the active one and `_syscall` sits at this offset.
    let (code, syscall) = unsafe {
        (
            (*info).si_code,
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned(),
        )
    };
    if code != SYS_SECCOMP {
        // Someone sent SIGSYS by hand: not a filter's verdict.
        return;
    }
    let mut line = LineBuffer::new();
    let now = SystemTime::now().max(UNIX_EPOCH);
    let name = usize::try_from(syscall)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map_or("unknown", |s| s.name());
    let kind = THREAD_KIND.with(Cell::get);
    let _ = writeln!(
        line,
        "{} ERROR [{kind}] seccomp: syscall {name} ({syscall}) is not allowed on the {kind} \
         thread; tessera exits with code {EXIT_BAD_SYSCALL}",
        humantime::format_rfc3339_micros(now),
    );
    crate::logger::write_raw(line.as_bytes());
    // SAFETY: ends the process at once, as the filter's verdict asks; nothing else runs.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) }
}

/// A fixed buffer a signal handler can format into; text past its end is cut.
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl LineBuffer {
    fn new() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let take = s.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_json(text: &str) -> (tempfile::NamedTempFile, PathBuf) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let path = file.path().to_path_buf();
        (file, path)
    }

    /// Allows everything (seccompiler wants the two actions to differ).
    const ALLOW_ALL: &str =
        r#"{"default_action": "allow", "filter_action": "log", "filter": [{"syscall": "uselib"}]}"#;

    #[test]
    fn builtin_filters_are_not_empty() {
        let filters = Filters::builtin();
        let programs = filters.programs.as_ref().unwrap();
        for (kind, program) in ThreadKind::ALL.iter().zip(programs.iter()) {
            assert!(
                program.len() > 10,
                "{kind} filter has {} instructions",
                program.len()
            );
        }
    }

    #[test]
    fn file_needs_exactly_the_three_kinds() {
        let (_t, path) = write_json(&format!(r#"{{"vmm": {ALLOW_ALL}, "api": {ALLOW_ALL}}}"#));
        let error = Filters::from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("no filter for the \"vcpu\" thread"),
            "{error}"
        );
        assert!(error.contains(&path.display().to_string()), "{error}");

        let (_t, path) = write_json(&format!(
            r#"{{"vmm": {ALLOW_ALL}, "api": {ALLOW_ALL}, "vcpu": {ALLOW_ALL}, "io": {ALLOW_ALL}}}"#
        ));
        let error = Filters::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown thread kind \"io\""), "{error}");

        let (_t, path) = write_json(&format!(
            r#"{{"vmm": {ALLOW_ALL}, "api": {ALLOW_ALL}, "vcpu": {ALLOW_ALL}}}"#
        ));
        assert!(Filters::from_file(&path).unwrap().enabled());
    }

    #[test]
    fn file_errors_name_the_file() {
        let (_t, path) = write_json(
            r#"{"vmm": {"default_action": "trap", "filter_action": "allow",
                "filter": [{"syscall": "no_such_call"}]}}"#,
        );
        let error = Filters::from_file(&path).unwrap_err().to_string();
        assert!(error.starts_with("--seccomp-filter "), "{error}");
        assert!(error.contains("no_such_call"), "{error}");

        let missing = Path::new("/nonexistent/filters.json");
        let error = Filters::from_file(missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read --seccomp-filter /nonexistent/filters.json:"),
            "{error}"
        );
    }

    #[test]
    fn disabled_filters_install_nothing() {
        assert!(!Filters::none().enabled());
        Filters::none().apply(ThreadKind::Vcpu).unwrap();
    }

    /// Set in a child copy of this test binary: the test then plays the filtered process.
    const CHILD: &str = "TESSERA_SECCOMP_TEST_CHILD";

    /// A panic, then an abort, on threads under the built-in filters end the process as a
    /// panic and an abort do, not as a forbidden syscall. Run in a child process (this test
    /// binary again), so that the filters and the abort stay there.
    #[test]
    fn panics_and_aborts_under_a_filter_are_not_mistaken_for_bad_syscalls() {
        let test =
            "seccomp::tests::panics_and_aborts_under_a_filter_are_not_mistaken_for_bad_syscalls";
        if std::env::var_os(CHILD).is_some() {
            let filters = Filters::builtin();
            let for_vcpu = filters.clone();
            let panicked = std::thread::spawn(move || {
                for_vcpu.apply(ThreadKind::Vcpu).unwrap();
                panic!("deliberate panic under the vcpu filter");
            })
            .join();
            assert!(panicked.is_err());
            let _ = std::thread::spawn(move || {
                filters.apply(ThreadKind::Api).unwrap();
                std::process::abort();
            })
            .join();
            unreachable!("the abort ends the process");
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            // A backtrace reads files (getcwd, openat) that no filter allows.
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("deliberate panic under the vcpu filter"),
            "{stderr}"
        );
        assert!(!stderr.contains("seccomp: syscall"), "{stderr}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
    }

    #[test]
    fn line_buffer_cuts_long_text() {
        let mut line = LineBuffer::new();
        let long = "x".repeat(300);
        write!(line, "{long}").unwrap();
        assert_eq!(line.as_bytes().len(), 256);
    }
}
