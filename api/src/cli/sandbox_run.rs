//! `tessera run --image REF --isolation sandbox`: the image's workload as a confined process
//! tree on this host ([`jailer::sandbox`]), from the same workload spec a microVM runs.

use guest_init::spec::Policy;
use jailer::sandbox::{IdMap, Sandbox, Volume};

use super::run::{inspect_image, RunArgs};
use super::run_dir::RunDir;
use super::volumes;
use crate::guest_image;
use images::store::Store;

/// Runs the image's command in the sandbox and returns its exit code.
pub fn run(args: &RunArgs, policy: Option<Policy>) -> Result<u8, String> {
    let reference = args
        .image
        .as_deref()
        .ok_or("--isolation sandbox runs an image (--image REF) or a Wasm module")?;
    if let Some(flag) = args.vm_only_flag() {
        return Err(format!(
            "{flag} configures a VM: the sandbox level shares this host's kernel (drop it, or use --isolation microvm)"
        ));
    }
    let image = inspect_image(reference, args.pull)?;
    let mut spec = args
        .workload(Some(&image), None)?
        .ok_or("--image needs a command")?;
    spec.policy = policy;
    spec.rlimits = args.rlimits()?;
    spec.validate().map_err(|e| e.to_string())?;
    let id_map = IdMap::for_caller();
    let store = Store::open(&guest_image::cache_dir()?.join("images"))
        .map_err(|e| format!("--image {reference}: {e}"))?;
    let lower = store
        .sandbox_tree(&image.image, id_map.root_owner())
        .map_err(|e| format!("--image {reference}: {e}"))?;
    let volumes = args
        .volumes
        .iter()
        .map(|flag| {
            let volume = volumes::parse(flag)?;
            Ok(Volume {
                source: volume.host,
                destination: volume.guest,
                read_only: volume.read_only,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !args.interactive {
        // As `docker run` and a microVM: the workload's stdin is the terminal's only with -i.
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        // SAFETY: dup2 takes two open descriptors.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) };
    }
    let staging = RunDir::new()?.sandbox();
    std::fs::create_dir(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let sandbox = Sandbox {
        spec,
        lower,
        volumes,
        staging: staging.clone(),
        name: format!("run-{}", std::process::id()),
        id_map,
    };
    let result = sandbox.run().map_err(|e| e.to_string());
    let _ = std::fs::remove_dir(&staging);
    result
}
