//! What the wasm crate's tests run inside wasmtime: `guest COMMAND ARGS...`.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str).unwrap_or("");
    let rest = &args[2.min(args.len())..];
    match command {
        "hello" => println!("hello from wasm"),
        "args" => println!("{}", args.join(" ")),
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            println!("{}", vars.join(" "));
        }
        "cat" => match std::fs::read_to_string(&rest[0]) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("cannot read {}: {e}", rest[0]);
                std::process::exit(3);
            }
        },
        "write" => match std::fs::write(&rest[0], &rest[1]) {
            Ok(()) => println!("wrote {}", rest[0]),
            Err(e) => {
                eprintln!("cannot write {}: {e}", rest[0]);
                std::process::exit(3);
            }
        },
        "stdin" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).unwrap();
            print!("{}", text.to_uppercase());
        }
        "streams" => {
            println!("to stdout");
            eprintln!("to stderr");
        }
        "exit" => std::process::exit(rest[0].parse().unwrap()),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "grow" => {
            let mut chunks = Vec::new();
            loop {
                chunks.push(vec![1u8; 1 << 20]);
                print!(".");
                let _ = std::io::stdout().flush();
            }
        }
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(2);
        }
    }
}
