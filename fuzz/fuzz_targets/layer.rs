//! Any bytes as a layer blob (tar, gzip or zstd): an error or a result, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dockgc_content::scan_blob(data);
});
