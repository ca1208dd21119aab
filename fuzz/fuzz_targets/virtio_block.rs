//! Descriptor chains of arbitrary shape and content through the virtio-block device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::virtio::block::fuzz_one(data));
