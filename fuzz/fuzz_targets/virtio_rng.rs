//! Descriptor chains of arbitrary shape and content through the virtio-rng device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::virtio::rng::fuzz_one(data));
