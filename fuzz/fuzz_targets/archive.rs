//! Any bytes as a docker-save or OCI archive: an error or a result, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dockgc_content::read_archive(data);
});
