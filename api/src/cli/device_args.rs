//! `--disk`, `--net`, `--vsock` and `--entropy`: short `key=value` flags that build the same
//! [`DevicesBody`] a config file holds.

use vmm::config::{
    DriveBody, DriveCacheType, EntropyBody, NetworkInterfaceBody, RateLimiterBody, TokenBucketBody,
    VsockBody,
};
use vmm::DevicesBody;

/// The device flags as given on the command line.
pub struct DeviceArgs<'a> {
    pub disks: &'a [String],
    pub nets: &'a [String],
    pub vsock: Option<&'a str>,
    pub entropy: bool,
}

impl DeviceArgs<'_> {
    pub fn to_config(&self) -> Result<DevicesBody, String> {
        let drives = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, spec)| parse_disk(i, spec).map_err(|e| format!("--disk {spec:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let network_interfaces = self
            .nets
            .iter()
            .enumerate()
            .map(|(i, spec)| parse_net(i, spec).map_err(|e| format!("--net {spec:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let vsock = self
            .vsock
            .map(|spec| parse_vsock(spec).map_err(|e| format!("--vsock {spec:?}: {e}")))
            .transpose()?;
        Ok(DevicesBody {
            drives,
            network_interfaces,
            vsock,
            entropy: self.entropy.then(EntropyBody::default),
        })
    }
}

/// `PATH[,ro][,root][,cache=unsafe|writeback][,id=NAME][,bw=BYTES_PER_S][,iops=N]`
fn parse_disk(index: usize, spec: &str) -> Result<DriveBody, String> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("no path")?;
    let mut drive = DriveBody {
        drive_id: format!("disk{index}"),
        path_on_host: path.into(),
        is_root_device: false,
        is_read_only: false,
        cache_type: DriveCacheType::Unsafe,
        rate_limiter: None,
    };
    let mut limits = RateLimiterBody::default();
    for part in parts {
        match part.split_once('=') {
            None if part == "ro" => drive.is_read_only = true,
            None if part == "root" => drive.is_root_device = true,
            Some(("cache", "unsafe")) => drive.cache_type = DriveCacheType::Unsafe,
            Some(("cache", "writeback")) => drive.cache_type = DriveCacheType::Writeback,
            Some(("id", id)) => drive.drive_id = id.to_string(),
            Some(("bw", n)) => limits.bandwidth = Some(per_second(n)?),
            Some(("iops", n)) => limits.ops = Some(per_second(n)?),
            _ => {
                return Err(format!(
                    "unknown option {part:?} (use ro, root, cache=unsafe|writeback, id=NAME, bw=BYTES_PER_S, iops=N)"
                ))
            }
        }
    }
    drive.rate_limiter = (limits != RateLimiterBody::default()).then_some(limits);
    Ok(drive)
}

/// `tap=NAME[,mac=MAC][,id=NAME][,bw=BYTES_PER_S]` (`bw` limits each direction)
fn parse_net(index: usize, spec: &str) -> Result<NetworkInterfaceBody, String> {
    let mut iface = NetworkInterfaceBody {
        iface_id: format!("eth{index}"),
        host_dev_name: String::new(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) => iface.host_dev_name = name.to_string(),
            Some(("mac", mac)) => iface.guest_mac = Some(mac.to_string()),
            Some(("id", id)) => iface.iface_id = id.to_string(),
            Some(("bw", n)) => {
                let limit = Some(RateLimiterBody {
                    bandwidth: Some(per_second(n)?),
                    ops: None,
                });
                (iface.rx_rate_limiter, iface.tx_rate_limiter) = (limit, limit);
            }
            _ => {
                return Err(format!(
                    "unknown option {part:?} (use tap=NAME, mac=MAC, id=NAME, bw=BYTES_PER_S)"
                ))
            }
        }
    }
    if iface.host_dev_name.is_empty() {
        return Err("tap=NAME is required".into());
    }
    Ok(iface)
}

/// `cid=N,uds=PATH`
fn parse_vsock(spec: &str) -> Result<VsockBody, String> {
    let (mut cid, mut uds) = (None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("cid", n)) => {
                cid = Some(
                    n.parse()
                        .map_err(|_| format!("cid {n:?} is not a number"))?,
                )
            }
            Some(("uds", path)) => uds = Some(path.into()),
            _ => return Err(format!("unknown option {part:?} (use cid=N,uds=PATH)")),
        }
    }
    Ok(VsockBody {
        vsock_id: None,
        guest_cid: cid.ok_or("cid=N is required")?,
        uds_path: uds.ok_or("uds=PATH is required")?,
    })
}

/// A bucket refilled with `n` tokens every second.
fn per_second(n: &str) -> Result<TokenBucketBody, String> {
    match n.parse::<u64>() {
        Ok(size) if size > 0 => Ok(TokenBucketBody {
            size,
            one_time_burst: 0,
            refill_time: 1000,
        }),
        _ => Err(format!("{n:?} is not a positive number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(disks: &[&str], nets: &[&str], vsock: Option<&str>) -> Result<DevicesBody, String> {
        let disks: Vec<String> = disks.iter().map(|s| s.to_string()).collect();
        let nets: Vec<String> = nets.iter().map(|s| s.to_string()).collect();
        DeviceArgs {
            disks: &disks,
            nets: &nets,
            vsock,
            entropy: true,
        }
        .to_config()
    }

    #[test]
    fn flags_build_the_config_file_shape() {
        let c = config(
            &[
                "/a.img,ro,root",
                "/b.img,cache=writeback,id=data,bw=1048576,iops=100",
            ],
            &["tap=tap0,mac=06:00:00:00:00:01", "tap=tap1,bw=1000"],
            Some("cid=3,uds=/tmp/v.sock"),
        )
        .unwrap();
        assert_eq!(c.drives[0].drive_id, "disk0");
        assert!(c.drives[0].is_read_only && c.drives[0].is_root_device);
        assert!(c.drives[0].rate_limiter.is_none());
        let d = &c.drives[1];
        assert_eq!(
            (d.drive_id.as_str(), d.cache_type),
            ("data", DriveCacheType::Writeback)
        );
        let rl = d.rate_limiter.unwrap();
        assert_eq!(rl.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(rl.ops.unwrap().refill_time, 1000);
        assert_eq!(c.network_interfaces[0].host_dev_name, "tap0");
        assert_eq!(c.network_interfaces[1].iface_id, "eth1");
        let tx = c.network_interfaces[1].tx_rate_limiter.unwrap();
        assert_eq!(tx.bandwidth.unwrap().size, 1000);
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert!(c.entropy.is_some());
        assert!(c.settings().is_ok());
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_part() {
        let e = config(&["/a,rw"], &[], None).unwrap_err();
        assert!(
            e.starts_with("--disk \"/a,rw\": unknown option \"rw\""),
            "{e}"
        );
        let e = config(&[",ro"], &[], None).unwrap_err();
        assert_eq!(e, "--disk \",ro\": no path");
        let e = config(&["/a,bw=0"], &[], None).unwrap_err();
        assert!(e.contains("not a positive number"), "{e}");
        let e = config(&[], &["mac=06:00:00:00:00:01"], None).unwrap_err();
        assert!(e.contains("tap=NAME is required"), "{e}");
        let e = config(&[], &[], Some("cid=x,uds=/v")).unwrap_err();
        assert!(e.contains("cid \"x\" is not a number"), "{e}");
        let e = config(&[], &[], Some("cid=3")).unwrap_err();
        assert!(e.contains("uds=PATH is required"), "{e}");
    }
}
