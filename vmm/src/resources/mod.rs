//! The one checked configuration of a VM that has not started ([`VmResources`]): every front
//! end (CLI flags, REST, the config file; later the workload spec, the shim, a snapshot)
//! builds it with these setters, and the builder boots it.
//!
//! Every update is checked in full on a copy before it replaces the current value, so a request
//! that fails changes nothing.

use std::fs::{File, FileType, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use guest_init::spec::{SpecError, WorkloadSpec};

pub mod devices;

use crate::config::{
    BootSource, BootSourceBody, ConfigError, ConsoleOutput, DevicesBody, DriveBody,
    DriveUpdateBody, EntropyBody, LoggerBody, MachineConfig, MachineConfigBody, MetricsBody,
    NetworkInterfaceBody, NetworkInterfaceUpdateBody, VmConfigBody, VsockBody,
};
pub use devices::{DeviceConfigError, DeviceSettings};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ResourcesError {
    /// {0}
    Config(#[from] ConfigError),
    /// {0}
    Device(#[from] DeviceConfigError),
    /// machine-config: {0} is required
    MissingField(&'static str),
    /// machine-config: {0}
    Unsupported(&'static str),
    /// cannot open {what} {path}: {source}
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// {what} {path} is not {expected}
    NotAFile {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    /// {what} is not supported by Tessera yet
    NotSupportedYet { what: &'static str },
    /// no drive with drive_id {0:?}
    UnknownDrive(String),
    /// no network interface with iface_id {0:?}
    UnknownInterface(String),
    /// workload: {0}
    Workload(#[from] SpecError),
}

impl MachineConfigBody {
    /// The full body `GET /machine-config` returns.
    pub fn from_config(config: &MachineConfig) -> Self {
        Self {
            vcpu_count: Some(u64::from(config.vcpu_count)),
            mem_size_mib: Some(config.mem_size_mib),
            smt: Some(false),
            track_dirty_pages: Some(false),
            huge_pages: Some("None".into()),
            cpu_template: None,
        }
    }

    /// `current` with the fields this body sets; `require_all` for `PUT`.
    pub fn apply_to(
        &self,
        current: &MachineConfig,
        require_all: bool,
    ) -> Result<MachineConfig, ResourcesError> {
        if self.smt == Some(true) {
            return Err(ResourcesError::Unsupported(
                "smt: true is not supported (Tessera gives each vCPU its own core)",
            ));
        }
        if self.track_dirty_pages == Some(true) {
            return Err(ResourcesError::Unsupported(
                "track_dirty_pages: true is not supported yet (no snapshots)",
            ));
        }
        if self.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err(ResourcesError::Unsupported(
                "huge_pages: only \"None\" is supported",
            ));
        }
        if self.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(ResourcesError::Unsupported(
                "cpu_template: only \"None\" is supported",
            ));
        }
        if require_all {
            self.vcpu_count
                .ok_or(ResourcesError::MissingField("vcpu_count"))?;
            self.mem_size_mib
                .ok_or(ResourcesError::MissingField("mem_size_mib"))?;
        }
        Ok(MachineConfig::new(
            self.vcpu_count.unwrap_or(u64::from(current.vcpu_count)),
            self.mem_size_mib.unwrap_or(current.mem_size_mib),
        )?)
    }
}

impl BootSourceBody {
    /// Checks the command line and that kernel and initrd can be opened now, so a typo is
    /// reported by the request that made it rather than by `InstanceStart`.
    pub fn to_boot_source(&self) -> Result<BootSource, ResourcesError> {
        check_readable("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_readable("initrd_path", initrd)?;
        }
        Ok(BootSource::new(
            self.kernel_image_path.clone(),
            self.initrd_path.clone(),
            self.boot_args.clone(),
        )?)
    }
}

/// The configuration of a VM that has not started: each setter checks its input and the
/// configuration it would produce, and changes nothing when either is wrong.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub machine: MachineConfig,
    pub boot_source: Option<(BootSourceBody, BootSource)>,
    pub devices: DevicesBody,
    pub logger: Option<LoggerBody>,
    pub metrics: Option<MetricsBody>,
    /// The workload tessera-init runs, for a guest whose init is tessera-init.
    pub workload: Option<WorkloadSpec>,
    /// Where the guest console goes: not part of Firecracker's configuration, so the API and
    /// config-file front ends leave it on stdio.
    pub console: ConsoleOutput,
}

impl VmResources {
    /// Resources from a config file's contents; `logger` and `metrics` are returned as given
    /// for the caller to open.
    pub fn from_config(config: &VmConfigBody) -> Result<Self, ResourcesError> {
        for (what, value) in [
            ("balloon", &config.balloon),
            ("mmds-config", &config.mmds_config),
            ("cpu-config", &config.cpu_config),
        ] {
            if value.is_some() {
                return Err(ResourcesError::NotSupportedYet { what });
            }
        }
        let mut resources = Self::default();
        if let Some(machine) = &config.machine_config {
            resources.set_machine_config(machine, true)?;
        }
        if let Some(boot) = &config.boot_source {
            resources.set_boot_source(boot)?;
        }
        let devices = DevicesBody {
            drives: config.drives.clone(),
            network_interfaces: config.network_interfaces.clone(),
            vsock: config.vsock.clone(),
            entropy: config.entropy,
        };
        for drive in &devices.drives {
            check_drive_file(drive)?;
        }
        devices.settings()?;
        resources.devices = devices;
        resources.logger = config.logger.clone();
        resources.metrics = config.metrics.clone();
        if let Some(spec) = &config.workload {
            resources.set_workload(spec.clone())?;
        }
        Ok(resources)
    }

    /// The configuration in the config file's shape.
    pub fn to_config(&self) -> VmConfigBody {
        VmConfigBody {
            boot_source: self.boot_source.as_ref().map(|(body, _)| body.clone()),
            machine_config: Some(MachineConfigBody::from_config(&self.machine)),
            drives: self.devices.drives.clone(),
            network_interfaces: self.devices.network_interfaces.clone(),
            vsock: self.devices.vsock.clone(),
            entropy: self.devices.entropy,
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
            balloon: None,
            mmds_config: None,
            cpu_config: None,
            workload: self.workload.clone(),
        }
    }

    pub fn set_machine_config(
        &mut self,
        body: &MachineConfigBody,
        require_all: bool,
    ) -> Result<(), ResourcesError> {
        self.machine = body.apply_to(&self.machine, require_all)?;
        Ok(())
    }

    /// The workload tessera-init runs; it reaches the guest in an archive appended to the
    /// initrd (see `guest_init::protocol`).
    pub fn set_workload(&mut self, spec: WorkloadSpec) -> Result<(), ResourcesError> {
        spec.validate()?;
        self.workload = Some(spec);
        Ok(())
    }

    pub fn set_boot_source(&mut self, body: &BootSourceBody) -> Result<(), ResourcesError> {
        let boot = body.to_boot_source()?;
        self.boot_source = Some((body.clone(), boot));
        Ok(())
    }

    /// Adds the drive, or replaces the one with the same id (keeping its place, so the guest's
    /// disk names do not move).
    pub fn put_drive(&mut self, drive: &DriveBody) -> Result<(), ResourcesError> {
        check_drive_file(drive)?;
        let mut devices = self.devices.clone();
        match devices
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive.clone(),
            None => devices.drives.push(drive.clone()),
        }
        self.commit_devices(devices)
    }

    /// Records a running drive's new backing file or rate limiter.
    pub fn update_drive(&mut self, update: &DriveUpdateBody) -> Result<(), ResourcesError> {
        let drive = self
            .devices
            .drives
            .iter_mut()
            .find(|d| d.drive_id == update.drive_id)
            .ok_or_else(|| ResourcesError::UnknownDrive(update.drive_id.clone()))?;
        if let Some(path) = &update.path_on_host {
            drive.path_on_host = path.clone();
        }
        if let Some(limiter) = update.rate_limiter {
            drive.rate_limiter = Some(limiter.patched(drive.rate_limiter));
        }
        Ok(())
    }

    pub fn drive(&self, id: &str) -> Result<&DriveBody, ResourcesError> {
        self.devices
            .drives
            .iter()
            .find(|d| d.drive_id == id)
            .ok_or_else(|| ResourcesError::UnknownDrive(id.to_string()))
    }

    pub fn put_network_interface(
        &mut self,
        iface: &NetworkInterfaceBody,
    ) -> Result<(), ResourcesError> {
        let mut devices = self.devices.clone();
        match devices
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == iface.iface_id)
        {
            Some(existing) => *existing = iface.clone(),
            None => devices.network_interfaces.push(iface.clone()),
        }
        self.commit_devices(devices)
    }

    /// Records a running interface's new rate limiters.
    pub fn update_network_interface(
        &mut self,
        update: &NetworkInterfaceUpdateBody,
    ) -> Result<(), ResourcesError> {
        let iface = self
            .devices
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == update.iface_id)
            .ok_or_else(|| ResourcesError::UnknownInterface(update.iface_id.clone()))?;
        if let Some(limiter) = update.rx_rate_limiter {
            iface.rx_rate_limiter = Some(limiter.patched(iface.rx_rate_limiter));
        }
        if let Some(limiter) = update.tx_rate_limiter {
            iface.tx_rate_limiter = Some(limiter.patched(iface.tx_rate_limiter));
        }
        Ok(())
    }

    pub fn network_interface(&self, id: &str) -> Result<&NetworkInterfaceBody, ResourcesError> {
        self.devices
            .network_interfaces
            .iter()
            .find(|n| n.iface_id == id)
            .ok_or_else(|| ResourcesError::UnknownInterface(id.to_string()))
    }

    pub fn set_vsock(&mut self, vsock: &VsockBody) -> Result<(), ResourcesError> {
        let mut devices = self.devices.clone();
        devices.vsock = Some(vsock.clone());
        self.commit_devices(devices)
    }

    pub fn set_entropy(&mut self, entropy: &EntropyBody) -> Result<(), ResourcesError> {
        let mut devices = self.devices.clone();
        devices.entropy = Some(*entropy);
        self.commit_devices(devices)
    }

    fn commit_devices(&mut self, devices: DevicesBody) -> Result<(), ResourcesError> {
        devices.settings()?;
        self.devices = devices;
        Ok(())
    }
}

/// A drive's file must be a regular file or block device that opens with the access the guest
/// will get.
fn check_drive_file(drive: &DriveBody) -> Result<(), ResourcesError> {
    let file = open_checked(
        "drive path_on_host",
        &drive.path_on_host,
        !drive.is_read_only,
    )?;
    let kind = file_type("drive path_on_host", &drive.path_on_host, &file)?;
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ResourcesError::NotAFile {
            what: "drive path_on_host",
            path: drive.path_on_host.display().to_string(),
            expected: "a regular file or block device",
        });
    }
    Ok(())
}

/// A kernel or initrd must be a regular file we can read.
fn check_readable(what: &'static str, path: &Path) -> Result<(), ResourcesError> {
    let file = open_checked(what, path, false)?;
    if !file_type(what, path, &file)?.is_file() {
        return Err(ResourcesError::NotAFile {
            what,
            path: path.display().to_string(),
            expected: "a regular file",
        });
    }
    Ok(())
}

/// Opens `path` without blocking on a FIFO or taking a tty as controlling terminal.
fn open_checked(what: &'static str, path: &Path, write: bool) -> Result<File, ResourcesError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| ResourcesError::File {
            what,
            path: path.display().to_string(),
            source,
        })
}

fn file_type(what: &'static str, path: &Path, file: &File) -> Result<FileType, ResourcesError> {
    file.metadata()
        .map(|m| m.file_type())
        .map_err(|source| ResourcesError::File {
            what,
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn temp_file(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("tessera-resources-{}-{name}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        path
    }

    #[test]
    fn machine_config_put_needs_both_fields_and_patch_keeps_the_rest() {
        let mut r = VmResources::default();
        let partial = MachineConfigBody {
            vcpu_count: Some(2),
            ..Default::default()
        };
        assert!(matches!(
            r.set_machine_config(&partial, true),
            Err(ResourcesError::MissingField("mem_size_mib"))
        ));
        assert_eq!(r.machine, MachineConfig::default());
        r.set_machine_config(&partial, false).unwrap();
        assert_eq!(r.machine.vcpu_count, 2);
        assert_eq!(r.machine.mem_size_mib, 128);
        let smt = MachineConfigBody {
            smt: Some(true),
            vcpu_count: Some(4),
            ..Default::default()
        };
        assert!(r.set_machine_config(&smt, false).is_err());
        assert_eq!(r.machine.vcpu_count, 2, "a refused update changes nothing");
        let too_big = MachineConfigBody {
            vcpu_count: Some(64),
            mem_size_mib: Some(256),
            ..Default::default()
        };
        assert!(r.set_machine_config(&too_big, true).is_err());
        assert_eq!(r.machine.mem_size_mib, 128);
    }

    #[test]
    fn a_refused_drive_leaves_the_drives_as_they_were() {
        let path = temp_file("drive");
        let mut r = VmResources::default();
        let drive = |id: &str, root| DriveBody {
            drive_id: id.into(),
            path_on_host: path.clone(),
            is_root_device: root,
            is_read_only: true,
            cache_type: Default::default(),
            rate_limiter: None,
        };
        r.put_drive(&drive("rootfs", true)).unwrap();
        assert!(matches!(
            r.put_drive(&drive("second", true)),
            Err(ResourcesError::Device(DeviceConfigError::TwoRootDevices))
        ));
        let mut missing = drive("data", false);
        missing.path_on_host = "/nonexistent/disk.img".into();
        let err = r.put_drive(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/disk.img"), "{err}");
        assert_eq!(r.devices.drives, vec![drive("rootfs", true)]);
        // A FIFO would block a plain open until a writer came: refused at once instead.
        let fifo =
            std::env::temp_dir().join(format!("tessera-resources-{}-fifo", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut fifo_drive = drive("fifo", false);
        fifo_drive.path_on_host = fifo.clone();
        fifo_drive.is_read_only = true;
        let err = r.put_drive(&fifo_drive).unwrap_err().to_string();
        assert!(
            err.contains("is not a regular file or block device"),
            "{err}"
        );
        let boot = BootSourceBody {
            kernel_image_path: fifo.clone(),
            initrd_path: None,
            boot_args: None,
        };
        let err = r.set_boot_source(&boot).unwrap_err().to_string();
        assert!(err.ends_with("is not a regular file"), "{err}");
        std::fs::remove_file(fifo).unwrap();
        // A PUT with an existing id replaces it in place.
        r.put_drive(&drive("rootfs", false)).unwrap();
        assert_eq!(r.devices.drives, vec![drive("rootfs", false)]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn config_file_round_trips_and_refuses_unsupported_sections() {
        let kernel = temp_file("kernel");
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 64}},
                "balloon": null}}"#,
            kernel.display()
        );
        let config: VmConfigBody = serde_json::from_str(&json).unwrap();
        let r = VmResources::from_config(&config).unwrap();
        assert_eq!(r.machine, MachineConfig::new(2, 64).unwrap());
        let out = serde_json::to_string(&r.to_config()).unwrap();
        let again: VmConfigBody = serde_json::from_str(&out).unwrap();
        assert_eq!(VmResources::from_config(&again).unwrap().machine, r.machine);

        let balloon: VmConfigBody =
            serde_json::from_str(r#"{"balloon": {"amount_mib": 1}}"#).unwrap();
        let err = VmResources::from_config(&balloon).unwrap_err().to_string();
        assert_eq!(err, "balloon is not supported by Tessera yet");
        let missing = BootSourceBody {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            initrd_path: None,
            boot_args: None,
        };
        assert!(VmResources::default().set_boot_source(&missing).is_err());
        std::fs::remove_file(kernel).unwrap();
    }
}
