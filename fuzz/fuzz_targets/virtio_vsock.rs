//! Descriptor chains of arbitrary shape and content through the virtio-vsock device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::virtio::vsock::fuzz_one(data));
