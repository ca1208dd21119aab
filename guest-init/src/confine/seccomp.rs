//! The default seccomp profile: Docker's default allow-list (moby's profiles/seccomp/default.json,
//! the reference container users know) for x86_64, with its capability-dependent groups and
//! argument rules, plus what the policy adds. Everything else fails with EPERM, except clone3,
//! which fails with ENOSYS so that C libraries fall back to clone (whose namespace flags are
//! refused), as Docker does.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

use crate::spec::Policy;

/// Allowed whatever the policy says (Docker's first, unconditional group, x86_64 names).
const ALLOWED: &str = "accept accept4 access adjtimex alarm arch_prctl bind brk capget capset \
    chdir chmod chown clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range \
    connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl \
    epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve \
    execveat exit exit_group faccessat faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod \
    fchmodat fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr \
    fsetxattr fstat fstatfs fsync ftruncate futex futex_waitv futimesat getcpu getcwd getdents \
    getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid \
    getppid getpriority getrandom getresgid getresuid getrlimit get_robust_list getrusage getsid \
    getsockname getsockopt get_thread_area gettid gettimeofday getuid getxattr inotify_add_watch \
    inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents \
    io_pgetevents ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register \
    io_uring_setup kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown \
    lgetxattr link linkat listen listxattr llistxattr lremovexattr lseek lsetxattr lstat madvise \
    membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 \
    mlockall mmap modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive \
    mq_timedsend mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap \
    name_to_handle_at nanosleep newfstatat open openat openat2 pause pidfd_open \
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64 \
    preadv preadv2 prlimit64 process_mrelease process_vm_readv process_vm_writev pselect6 ptrace \
    pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg \
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq \
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend \
    rt_sigtimedwait rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam \
    sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval \
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select \
    semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid \
    setgroups setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit \
    set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setxattr shmat \
    shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socketpair splice stat statfs \
    statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create \
    timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime \
    timerfd_settime times tkill truncate umask uname unlink unlinkat utime utimensat utimes vfork \
    vmsplice wait4 waitid write writev";

/// Allowed when the policy grants the capability (Docker's `includes.caps` groups).
const BY_CAPABILITY: [(&str, &str); 13] = [
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount2 unshare",
    ),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday clock_settime"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF CAP_PERFMON", "bpf perf_event_open"),
];

/// clone's namespace flags (CLONE_NEWNS ... CLONE_NEWNET and CLONE_NEWCGROUP... as Docker
/// masks them: 0x7E020000).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// personality(2) values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26,
/// and the query.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const AF_VSOCK: u64 = 40;

/// The two filters to install, in order: the allow-list (EPERM for the rest) and the clone3
/// answer (ENOSYS). Both run; the kernel keeps the stricter result, and ENOSYS outranks allow.
pub struct Profile {
    pub filters: Vec<BpfProgram>,
}

/// Why the profile could not be built: a name the policy gave, usually.
pub fn profile(policy: &Policy) -> Result<Profile, String> {
    let admin = policy.grants("CAP_SYS_ADMIN");
    let mut names: Vec<&str> = ALLOWED.split_whitespace().collect();
    for (caps, group) in BY_CAPABILITY {
        if caps.split(' ').any(|cap| policy.grants(cap)) {
            names.extend(group.split_whitespace());
        }
    }
    names.extend(policy.syscalls.iter().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    let mut rules: Vec<Value> = names
        .iter()
        .map(|name| json!({ "syscall": name }))
        .collect();
    if !admin && !names.contains(&"clone") {
        rules.push(json!({"syscall": "clone", "args": [
            {"index": 0, "type": "qword", "op": {"masked_eq": CLONE_NAMESPACE_FLAGS}, "val": 0}
        ]}));
    }
    if !names.contains(&"personality") {
        for value in PERSONALITIES {
            rules.push(json!({"syscall": "personality", "args": [
                {"index": 0, "type": "dword", "op": "eq", "val": value}
            ]}));
        }
    }
    if !names.contains(&"socket") {
        rules.push(json!({"syscall": "socket", "args": [
            {"index": 0, "type": "dword", "op": "ne", "val": AF_VSOCK}
        ]}));
    }
    let mut filters = BTreeMap::new();
    filters.insert(
        "allow",
        json!({"default_action": {"errno": libc::EPERM}, "filter_action": "allow", "filter": rules}),
    );
    if !admin && !names.contains(&"clone3") {
        filters.insert(
            "clone3",
            json!({"default_action": "allow", "filter_action": {"errno": libc::ENOSYS},
                   "filter": [{"syscall": "clone3"}]}),
        );
    }
    let json = serde_json::to_vec(&filters).map_err(|e| e.to_string())?;
    let mut compiled = seccompiler::compile_from_json(json.as_slice(), TargetArch::x86_64)
        .map_err(|e| format!("policy syscalls: {e}"))?;
    let filters = ["allow", "clone3"]
        .iter()
        .filter_map(|name| compiled.remove(*name))
        .collect();
    Ok(Profile { filters })
}

impl Profile {
    /// Installs the filters on this thread; no_new_privs must be set (or CAP_SYS_ADMIN held).
    pub fn apply(&self) -> Result<(), String> {
        for filter in &self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_and_names_unknown_extras() {
        let profile = profile(&Policy::new()).unwrap();
        assert_eq!(profile.filters.len(), 2);
        let mut admin = Policy::new();
        admin.capabilities = vec!["CAP_SYS_ADMIN".into()];
        admin.syscalls = vec!["reboot".into()];
        assert_eq!(super::profile(&admin).unwrap().filters.len(), 1);
        let mut bad = Policy::new();
        bad.syscalls = vec!["no_such_call".into()];
        let err = super::profile(&bad).err().unwrap();
        assert!(err.starts_with("policy syscalls: "), "{err}");
        assert!(err.contains("no_such_call"), "{err}");
    }
}
