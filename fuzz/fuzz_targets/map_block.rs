#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevol_fuzz::map_block(data));
