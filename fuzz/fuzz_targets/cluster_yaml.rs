#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rayish_suite::fuzz::cluster_yaml(data));
