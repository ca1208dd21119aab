//! The devices a user asks for ([`DevicesBody`]), checked together (ids, the root drive,
//! MACs, CIDs) and turned into device-model settings.

use std::collections::HashSet;

use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::block::{BlockConfig, CacheType};
use devices::virtio::net::NetConfig;
use devices::virtio::vsock::VsockConfig;

use crate::config::{DevicesBody, DriveCacheType};

/// The guest's serial number for a drive (GET_ID) holds at most this many bytes.
const MAX_ID_LEN: usize = 20;
/// CIDs 0-2 are reserved (hypervisor, local, host).
const MIN_GUEST_CID: u32 = 3;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// drive id {0:?} is used twice
    DuplicateDrive(String),
    /// drive id {0:?} must be 1 to 20 characters of letters, digits, '-' or '_'
    BadDriveId(String),
    /// more than one drive is marked as the root device
    TwoRootDevices,
    /// iface_id {0:?} must be 1 to 20 characters of letters, digits, '-' or '_'
    BadInterfaceId(String),
    /// network interface id {0:?} is used twice
    DuplicateInterface(String),
    /// network interface {iface}: host_dev_name {name:?} must be 1 to 15 bytes without '/' or spaces
    BadTapName { iface: String, name: String },
    /// network interface {iface}: guest_mac {mac:?} is not six hex bytes like 06:00:ac:10:00:02
    BadMac { iface: String, mac: String },
    /// network interface {iface}: guest_mac {mac} is a multicast address
    MulticastMac { iface: String, mac: String },
    /// vsock guest_cid {0} is reserved; use 3 or more
    BadCid(u32),
    /// vsock uds_path is empty
    EmptyUdsPath,
}

/// Device-model settings made from a checked [`DevicesBody`].
pub struct DeviceSettings {
    pub drives: Vec<BlockConfig>,
    /// `/dev/vdX` of the root drive, when one is marked.
    pub root_device: Option<(String, bool)>,
    /// Each interface's `iface_id` with its settings.
    pub nets: Vec<(String, NetConfig)>,
    pub vsock: Option<VsockConfig>,
    pub entropy: Option<RateLimiterConfig>,
}

impl DevicesBody {
    /// Checks names, ids and addresses (files and TAPs are opened later, by the devices).
    pub fn settings(&self) -> Result<DeviceSettings, DeviceConfigError> {
        let mut ids = HashSet::new();
        let mut root_device = None;
        let mut drives = Vec::new();
        for (index, d) in self.drives.iter().enumerate() {
            if !valid_id(&d.drive_id) {
                return Err(DeviceConfigError::BadDriveId(d.drive_id.clone()));
            }
            if !ids.insert(d.drive_id.as_str()) {
                return Err(DeviceConfigError::DuplicateDrive(d.drive_id.clone()));
            }
            if d.is_root_device {
                if root_device.is_some() {
                    return Err(DeviceConfigError::TwoRootDevices);
                }
                root_device = Some((disk_name(index), d.is_read_only));
            }
            drives.push(BlockConfig {
                path: d.path_on_host.clone(),
                read_only: d.is_read_only,
                cache_type: match d.cache_type {
                    DriveCacheType::Unsafe => CacheType::Unsafe,
                    DriveCacheType::Writeback => CacheType::Writeback,
                },
                serial: d.drive_id.clone(),
                rate_limiter: d.rate_limiter.unwrap_or_default().to_config(),
            });
        }

        let mut iface_ids = HashSet::new();
        let mut nets = Vec::new();
        for n in &self.network_interfaces {
            if !valid_id(&n.iface_id) {
                return Err(DeviceConfigError::BadInterfaceId(n.iface_id.clone()));
            }
            if !iface_ids.insert(n.iface_id.as_str()) {
                return Err(DeviceConfigError::DuplicateInterface(n.iface_id.clone()));
            }
            let name_ok = (1..=15).contains(&n.host_dev_name.len())
                && !n
                    .host_dev_name
                    .contains(|c: char| c == '/' || c.is_whitespace() || c == '\0');
            if !name_ok {
                return Err(DeviceConfigError::BadTapName {
                    iface: n.iface_id.clone(),
                    name: n.host_dev_name.clone(),
                });
            }
            let mac = n
                .guest_mac
                .as_deref()
                .map(|mac| parse_mac(&n.iface_id, mac))
                .transpose()?;
            nets.push((
                n.iface_id.clone(),
                NetConfig {
                    tap: n.host_dev_name.clone(),
                    mac,
                    mtu: None,
                    rx_rate_limiter: n.rx_rate_limiter.unwrap_or_default().to_config(),
                    tx_rate_limiter: n.tx_rate_limiter.unwrap_or_default().to_config(),
                },
            ));
        }

        let vsock = match &self.vsock {
            Some(v) if v.guest_cid < MIN_GUEST_CID => {
                return Err(DeviceConfigError::BadCid(v.guest_cid))
            }
            Some(v) if v.uds_path.as_os_str().is_empty() => {
                return Err(DeviceConfigError::EmptyUdsPath)
            }
            Some(v) => Some(VsockConfig {
                guest_cid: u64::from(v.guest_cid),
                uds_path: v.uds_path.clone(),
            }),
            None => None,
        };
        let entropy = self
            .entropy
            .map(|e| e.rate_limiter.unwrap_or_default().to_config());
        Ok(DeviceSettings {
            drives,
            root_device,
            nets,
            vsock,
            entropy,
        })
    }
}

/// DriveBody and interface ids appear in API paths, metrics names and the disk serial: 1 to 20
/// characters that need no escaping anywhere.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The name Linux gives the `index`th virtio disk: vda .. vdz, vdaa ...
pub fn disk_name(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("/dev/vd{}", String::from_utf8_lossy(&suffix))
}

fn parse_mac(iface: &str, text: &str) -> Result<[u8; 6], DeviceConfigError> {
    let bad = || DeviceConfigError::BadMac {
        iface: iface.to_string(),
        mac: text.to_string(),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(DeviceConfigError::MulticastMac {
            iface: iface.to_string(),
            mac: text.to_string(),
        });
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DriveBody, NetworkInterfaceBody, VsockBody};

    fn drive(id: &str) -> DriveBody {
        DriveBody {
            drive_id: id.into(),
            path_on_host: "/d".into(),
            is_root_device: false,
            is_read_only: false,
            cache_type: DriveCacheType::Unsafe,
            rate_limiter: None,
        }
    }

    #[test]
    fn firecracker_json_shape_parses() {
        let json = r#"{
            "drives": [{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
                        "is_read_only": true, "cache_type": "Writeback",
                        "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                    "guest_mac": "06:00:ac:10:00:02"}],
            "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
            "entropy": {}
        }"#;
        let config: DevicesBody = serde_json::from_str(json).unwrap();
        let s = config.settings().unwrap();
        assert_eq!(s.root_device, Some(("/dev/vda".to_string(), true)));
        assert_eq!(s.drives[0].serial, "rootfs");
        assert_eq!(s.drives[0].cache_type, CacheType::Writeback);
        let bw = s.drives[0].rate_limiter.bandwidth.unwrap();
        assert_eq!((bw.size, bw.refill_time_ms), (1 << 20, 1000));
        assert_eq!(s.nets[0].0, "eth0");
        assert_eq!(s.nets[0].1.mac, Some([6, 0, 0xac, 0x10, 0, 2]));
        assert_eq!(s.vsock.unwrap().guest_cid, 3);
        assert!(s.entropy.is_some());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<DevicesBody>(
            r#"{"drives": [{"drive_id": "a", "path_on_host": "/x", "bogus": 1}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bad_ids_macs_and_cids_are_refused() {
        let mut c = DevicesBody {
            drives: vec![drive("a"), drive("a")],
            ..Default::default()
        };
        assert_eq!(
            c.settings().err(),
            Some(DeviceConfigError::DuplicateDrive("a".into()))
        );
        c.drives = vec![drive("a b")];
        assert!(matches!(
            c.settings(),
            Err(DeviceConfigError::BadDriveId(_))
        ));
        c.drives = vec![drive(&"x".repeat(21))];
        assert!(matches!(
            c.settings(),
            Err(DeviceConfigError::BadDriveId(_))
        ));
        c.drives = vec![drive("")];
        assert!(matches!(
            c.settings(),
            Err(DeviceConfigError::BadDriveId(_))
        ));
        let mut two_roots = vec![drive("a"), drive("b")];
        two_roots.iter_mut().for_each(|d| d.is_root_device = true);
        c.drives = two_roots;
        assert_eq!(c.settings().err(), Some(DeviceConfigError::TwoRootDevices));

        for mac in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "zz:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            assert!(parse_mac("eth0", mac).is_err(), "{mac}");
        }
        assert!(matches!(
            parse_mac("eth0", "01:00:5e:00:00:01"),
            Err(DeviceConfigError::MulticastMac { .. })
        ));
        let c = DevicesBody {
            vsock: Some(VsockBody {
                vsock_id: None,
                guest_cid: 2,
                uds_path: "/v".into(),
            }),
            ..Default::default()
        };
        assert_eq!(c.settings().err(), Some(DeviceConfigError::BadCid(2)));
        let c = DevicesBody {
            network_interfaces: vec![NetworkInterfaceBody {
                iface_id: "eth0".into(),
                host_dev_name: "a-name-that-is-too-long".into(),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }],
            ..Default::default()
        };
        assert!(matches!(
            c.settings(),
            Err(DeviceConfigError::BadTapName { .. })
        ));
        let mut c = c;
        c.network_interfaces[0].host_dev_name = "tap0".into();
        c.network_interfaces[0].iface_id = "eth 0".into();
        assert_eq!(
            c.settings().err(),
            Some(DeviceConfigError::BadInterfaceId("eth 0".into()))
        );
    }

    #[test]
    fn disk_names_follow_linux() {
        assert_eq!(disk_name(0), "/dev/vda");
        assert_eq!(disk_name(25), "/dev/vdz");
        assert_eq!(disk_name(26), "/dev/vdaa");
    }
}
