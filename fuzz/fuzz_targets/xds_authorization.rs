#![no_main]
// Placeholder: the owning crate replaces this with a real target.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
