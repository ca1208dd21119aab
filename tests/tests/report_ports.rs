//! tessera-init (guest side) and the VMM's guest report device must agree on the ports.

use devices::legacy::{GUEST_REPORT_LEN, GUEST_REPORT_PORT};
use guest_init::protocol::{BOOT_DONE_PORT, EXIT_STATUS_PORT};

#[test]
fn guest_and_vmm_use_the_same_report_ports() {
    assert_eq!(u64::from(BOOT_DONE_PORT), GUEST_REPORT_PORT);
    assert_eq!(u64::from(EXIT_STATUS_PORT), GUEST_REPORT_PORT + 1);
    assert_eq!(GUEST_REPORT_LEN, 2);
}
