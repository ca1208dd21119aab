//! The benchmarks' hello-world module: WASI only, so any runtime runs it.

fn main() {
    println!("hello from wasm");
}
