//! The confinement a policy asks of the workload's own process, the same at every level that
//! runs a process (the host sandbox, tessera-init in a VM): capabilities dropped to what the
//! policy grants (bounding set included), no_new_privs, Landlock rules for a read-only root,
//! and the default seccomp profile ([`seccomp`]). Built before the exec (files opened, filters
//! compiled), applied in two steps around the change of user: [`drop_bounding`] while the
//! process still has every capability, [`Confinement::lock`] last, just before exec. The
//! process runner hooks both for a spec with a policy.

pub mod fs;
pub mod seccomp;

use std::collections::HashSet;
use std::path::Path;

use caps::{CapSet, Capability};
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    ABI,
};

use crate::spec::{Policy, Rlimit, CAPABILITIES};

/// The Landlock ABI asked for; older kernels enforce what they can (best effort), and a
/// kernel without Landlock leaves the read-only mounts as the only enforcement.
const LANDLOCK_ABI: ABI = ABI::V5;

/// The cgroup a guest's PID 1 makes for the policy's limits; the workload joins it before exec.
pub const WORKLOAD_CGROUP: &str = "/sys/fs/cgroup/workload";

/// Confinement made ready for one exec.
pub struct Confinement {
    keep: HashSet<Capability>,
    landlock: Option<RulesetCreated>,
    profile: seccomp::Profile,
    /// [`WORKLOAD_CGROUP`]'s `cgroup.procs`, when PID 1 made it.
    cgroup: Option<std::fs::File>,
}

/// The first step, while the process is still root: into the workload's cgroup, the
/// bounding set cut to what is kept.
pub struct BeforeUser {
    keep: HashSet<Capability>,
    cgroup: Option<std::fs::File>,
}

impl BeforeUser {
    pub fn apply(&mut self) -> Result<(), String> {
        if let Some(procs) = &mut self.cgroup {
            use std::io::Write as _;
            // "0" is the writer itself.
            procs
                .write_all(b"0")
                .map_err(|e| format!("cannot join {WORKLOAD_CGROUP}: {e}"))?;
        }
        drop_bounding(&self.keep)
    }
}

fn capability(name: &str) -> Option<Capability> {
    name.parse().ok()
}

impl Confinement {
    /// Compiles the profile and, for a read-only root, opens the Landlock rules (paths as this
    /// process sees them, so build it inside the workload's root).
    pub fn new(policy: &Policy) -> Result<Confinement, String> {
        let keep = policy
            .capability_bits()
            .into_iter()
            .filter_map(|bit| capability(CAPABILITIES[bit as usize]))
            .collect();
        let profile = seccomp::profile(policy)?;
        let landlock = match policy.filesystem.read_only_root {
            true => Some(landlock_rules(policy).map_err(|e| format!("landlock: {e}"))?),
            false => None,
        };
        let cgroup = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new(WORKLOAD_CGROUP).join("cgroup.procs"))
            .ok();
        Ok(Confinement {
            keep,
            landlock,
            profile,
            cgroup,
        })
    }

    /// The first step, for a hook before the change of user.
    pub fn before_user(&mut self) -> BeforeUser {
        BeforeUser {
            keep: self.keep.clone(),
            cgroup: self.cgroup.take(),
        }
    }

    /// The last step before exec, after the change of user: the granted capabilities only (as
    /// ambient ones too, so that a non-root command keeps them across exec), no_new_privs,
    /// Landlock, seccomp.
    pub fn lock(&mut self) -> Result<(), String> {
        let fail = |what: &str, e: caps::errors::CapsError| format!("cannot {what}: {e}");
        caps::set(None, CapSet::Effective, &self.keep).map_err(|e| fail("set capabilities", e))?;
        caps::set(None, CapSet::Permitted, &self.keep).map_err(|e| fail("set capabilities", e))?;
        caps::set(None, CapSet::Inheritable, &self.keep)
            .map_err(|e| fail("set capabilities", e))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear ambient capabilities", e))?;
        for cap in &self.keep {
            caps::raise(None, CapSet::Ambient, *cap).map_err(|e| fail("raise a capability", e))?;
        }
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        if let Some(ruleset) = self.landlock.take() {
            // Where the kernel has no Landlock (RulesetStatus::NotEnforced), the read-only
            // mounts still hold: Landlock is the second wall.
            ruleset
                .restrict_self()
                .map_err(|e| format!("cannot apply the Landlock rules: {e}"))?;
        }
        self.profile.apply()
    }
}

/// Drops every capability but `keep` from the bounding set (so no exec can get one back), and
/// keeps `keep` across a change of user. Before the change of user: it needs CAP_SETPCAP.
pub fn drop_bounding(keep: &HashSet<Capability>) -> Result<(), String> {
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    if !keep.is_empty() {
        // SAFETY: PR_SET_KEEPCAPS takes integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    Ok(())
}

/// A read-only root: read and execute everywhere, write only beneath the policy's read-write
/// paths and /dev.
fn landlock_rules(policy: &Policy) -> Result<RulesetCreated, landlock::RulesetError> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let mut writable = vec!["/dev".to_string()];
    writable.extend(policy.filesystem.read_write.iter().cloned());
    Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(LANDLOCK_ABI)))?
        .add_rules(path_beneath_rules(writable, all))
}

/// The policy's per-process limits as rlimits: open files, file size.
pub fn rlimits(policy: &Policy) -> Vec<Rlimit> {
    let mut limits = Vec::new();
    if let Some(files) = policy.limits.open_files {
        limits.push(Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: files,
            hard: files,
        });
    }
    if let Some(mib) = policy.limits.file_size_mib {
        let bytes = mib.saturating_mul(1 << 20);
        limits.push(Rlimit {
            kind: "RLIMIT_FSIZE".into(),
            soft: bytes,
            hard: bytes,
        });
    }
    limits
}
