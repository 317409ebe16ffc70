#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rayish_suite::fuzz::values(data));
