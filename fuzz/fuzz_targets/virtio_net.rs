//! Descriptor chains of arbitrary shape and content through the virtio-net device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::virtio::net::fuzz_one(data));
