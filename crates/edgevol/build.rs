//! Build script of the `edgevol` package. Its only job: `EDGEVOL_VM_TESTS=1`
//! at build time becomes `--cfg edgevol_vm_tests`, which un-ignores the
//! real-guest tests (tests/vm_*.rs). They boot a Linux guest under QEMU's
//! TCG, which takes tens of seconds per boot, so a plain `cargo test` lists
//! them as ignored instead of running them.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(edgevol_vm_tests)");
    println!("cargo::rerun-if-env-changed=EDGEVOL_VM_TESTS");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("EDGEVOL_VM_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=edgevol_vm_tests");
    }
}
