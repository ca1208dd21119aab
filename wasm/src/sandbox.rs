//! The host sandbox around a module (`tessera run app.wasm --isolation sandbox`): WASI's
//! capabilities inside (the module reaches only its preopens), the OS's confinement outside, so
//! that an engine bug does not become a host escape. [`enter`] runs first, while the process
//! has one thread: new network, IPC, UTS and PID namespaces (and a user namespace when not
//! root; the runner forks to be the PID namespace's first process), no_new_privs, rlimits.
//! [`lock`] runs once the module is loaded and its files are open: a seccomp allow-list of what wasmtime and WASI preview 1 need, refusing the rest with EPERM
//! (no exec, no sockets, no ptrace, no mount, no namespaces, no kernel keyring, no BPF). It
//! does not restrict paths: WASI confines the module to its preopens.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Open files the sandboxed runner may hold.
const MAX_OPEN_FILES: u64 = 4096;

/// Why the sandbox could not be made: the run stops rather than go on unconfined.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SandboxError {
    /// cannot make the sandbox's namespaces ({0}): run as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)
    Namespaces(io::Error),
    /// cannot map the sandbox's user: {0}
    UserMap(io::Error),
    /// cannot set no_new_privs: {0}
    NoNewPrivs(io::Error),
    /// cannot set rlimit {0}: {1}
    Rlimit(&'static str, io::Error),
    /// cannot build the seccomp filter: {0}
    Filter(String),
    /// cannot install the seccomp filter: {0}
    Install(String),
}

/// Enters the namespaces and sets the limits; call while the process has a single thread.
pub fn enter() -> Result<(), SandboxError> {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut flags =
        libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(SandboxError::Namespaces(io::Error::last_os_error()));
    }
    if uid != 0 {
        // The same user inside: files the module writes stay the caller's.
        let write = |path: &str, text: String| std::fs::write(path, text);
        write("/proc/self/setgroups", "deny".into())
            .and_then(|()| write("/proc/self/uid_map", format!("{uid} {uid} 1")))
            .and_then(|()| write("/proc/self/gid_map", format!("{gid} {gid} 1")))
            .map_err(SandboxError::UserMap)?;
    }
    enter_pid_namespace()?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(io::Error::last_os_error()));
    }
    for (name, resource, value) in [
        ("core", libc::RLIMIT_CORE, 0),
        ("nofile", libc::RLIMIT_NOFILE, MAX_OPEN_FILES),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(SandboxError::Rlimit(name, io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Forks into the new PID namespace: the child (its PID 1) goes on to run the module; this
/// process waits for it and ends as it ends.
fn enter_pid_namespace() -> Result<(), SandboxError> {
    // SAFETY: the process has one thread (see `enter`), so the child may run anything.
    match unsafe { libc::fork() } {
        -1 => Err(SandboxError::Namespaces(io::Error::last_os_error())),
        0 => {
            // The runner dies with the process that waits for it.
            // SAFETY: PR_SET_PDEATHSIG takes integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            Ok(())
        }
        child => {
            // Signals meant for the run (Ctrl-C, tessera's SIGTERM) go to the runner.
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                forward(signal, child);
            }
            let mut status = 0;
            loop {
                // SAFETY: `status` outlives the call.
                let rc = unsafe { libc::waitpid(child, &mut status, 0) };
                if rc == child
                    || (rc == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
                {
                    break;
                }
            }
            let code = match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
                (true, _) => libc::WEXITSTATUS(status),
                (_, true) => 128 + libc::WTERMSIG(status),
                _ => 255,
            };
            std::process::exit(code);
        }
    }
}

static RUNNER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = RUNNER.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

fn forward(signal: libc::c_int, child: libc::pid_t) {
    RUNNER.store(child, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: `pass_on` only calls kill, which is async-signal-safe.
    unsafe { libc::signal(signal, pass_on as *const () as libc::sighandler_t) };
}

/// What a loaded module may still ask the kernel for: memory, threads and futexes, signals
/// (wasmtime's trap handling), time, randomness, and file operations on descriptors it already
/// holds (preopens are directory descriptors; paths resolve beneath them with openat2).
const ALLOWED: &[libc::c_long] = &[
    // memory
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    // threads (wasmtime-wasi's blocking pool) and their synchronization
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // signals: traps are SIGSEGV/SIGILL/SIGFPE handled on an alternate stack
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    // time and randomness
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    // descriptors and the event loop
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    // file operations beneath held directories (WASI path_* and fd_*)
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_utimensat,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fadvise64,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fchmod,
    libc::SYS_getcwd,
];

/// With CGI extensions, what starting one needs, and what a program it runs (a script, its
/// interpreter) needs to start: the extension runs under the same filter, in the same
/// namespaces, as a child of the runner (the PID namespace keeps `kill` to the runner's own).
const FOR_EXTENSIONS: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_vfork,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_dup2,
    libc::SYS_arch_prctl,
    libc::SYS_access,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_readlink,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getppid,
    libc::SYS_getpgrp,
    libc::SYS_setpgid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_chdir,
    libc::SYS_umask,
    // on the socket pair above (socket() stays refused, and the network namespace is empty)
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
];

/// The compiled allow-list; `extensions` adds [`FOR_EXTENSIONS`].
pub fn filter(extensions: bool) -> Result<BpfProgram, SandboxError> {
    let extra = match extensions {
        true => FOR_EXTENSIONS,
        false => &[],
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    if extensions {
        // std's spawn reports the child's exec error over a unix socket pair; no other family.
        let unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| SandboxError::Filter(e.to_string()))?;
        rules.insert(libc::SYS_socketpair, vec![unix]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Filter(e.to_string()))
}

/// Installs the allow-list on every thread of the process.
pub fn lock(extensions: bool) -> Result<(), SandboxError> {
    let program = filter(extensions)?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| SandboxError::Install(e.to_string()))
}
