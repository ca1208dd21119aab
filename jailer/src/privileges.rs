//! Privilege drop: the VMM runs as `uid:gid` with no supplementary groups, no capabilities
//! (none kept through securebits or the ambient set) and `no_new_privs`.

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::error::JailError;

/// Becomes `uid:gid` with no supplementary groups, and can never gain privileges again.
pub(crate) fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let step = |step| {
        move |e: nix::Error| JailError::Refused {
            step,
            reason: format!("{uid}:{gid}: {e}"),
        }
    };
    // Neither inherited securebits (which could keep capabilities across the uid change) nor
    // ambient capabilities survive.
    // SAFETY: prctl with integer arguments only; the results are checked.
    let (securebits, ambient) = unsafe {
        (
            libc::prctl(libc::PR_SET_SECUREBITS, 0, 0, 0, 0),
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
        )
    };
    if securebits != 0 || ambient != 0 {
        return Err(JailError::Refused {
            step: "clear securebits and ambient capabilities",
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    setgroups(&[]).map_err(step("clear supplementary groups"))?;
    let gid = Gid::from_raw(gid);
    setresgid(gid, gid, gid).map_err(step("set the group id"))?;
    let uid = Uid::from_raw(uid);
    setresuid(uid, uid, uid).map_err(step("set the user id"))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    // Trust nothing: the ids must be the asked ones now (a -1 would have meant "unchanged").
    let ids = (nix::unistd::getresuid(), nix::unistd::getresgid());
    let dropped = matches!(&ids, (Ok(u), Ok(g))
        if [u.real, u.effective, u.saved] == [uid; 3] && [g.real, g.effective, g.saved] == [gid; 3]);
    if !dropped {
        return Err(JailError::Refused {
            step: "drop privileges",
            reason: format!("the process still runs as {ids:?}"),
        });
    }
    Ok(())
}
