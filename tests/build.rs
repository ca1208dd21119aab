//! Assembles the tiny test guests (guests/tiny.S) into ELF64 images, one per variant.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Variant names: each becomes `-DVARIANT_<NAME>` and `<name>.elf`.
const VARIANTS: &[&str] = &[
    "report64",
    "pvh",
    "reset64",
    "idle64",
    "triple64",
    "kbd64",
    "smp64",
    "tick64",
    "flood64",
    "rereset64",
    "bootspam64",
];

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils and gcc)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = PathBuf::from("guests/tiny.S");
    let script = PathBuf::from("guests/tiny.ld");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", script.display());
    for variant in VARIANTS {
        let object = out.join(format!("{variant}.o"));
        let image = out.join(format!("{variant}.elf"));
        run(Command::new("gcc")
            .args(["-c", "-x", "assembler-with-cpp"])
            .arg(format!("-DVARIANT_{}", variant.to_uppercase()))
            .arg(&source)
            .arg("-o")
            .arg(&object));
        run(Command::new("ld")
            .args(["-m", "elf_x86_64", "-T"])
            .arg(&script)
            .arg("-o")
            .arg(&image)
            .arg(&object));
    }
    println!("cargo:rustc-env=TINY_GUEST_DIR={}", out.display());
}
