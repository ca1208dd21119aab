//! What the wasm crate's tests run inside wasmtime: `guest COMMAND ARGS...`.

use std::io::{Read, Write};

/// Blockless's CGI host functions: core modules only (a preview 2 component imports WIT
/// interfaces, not this module).
#[cfg(not(target_env = "p2"))]
mod cgi {
    #[link(wasm_import_module = "blockless_cgi")]
    extern "C" {
        fn cgi_list_exec(handle: *mut u32) -> u32;
        fn cgi_list_read(handle: u32, buf: *mut u8, len: u32, n: *mut u32) -> u32;
        fn cgi_open(json: *const u8, len: u32, handle: *mut u32) -> u32;
        fn cgi_stdin_write(handle: u32, buf: *const u8, len: u32, n: *mut u32) -> u32;
        fn cgi_stdout_read(handle: u32, buf: *mut u8, len: u32, n: *mut u32) -> u32;
        fn cgi_close(handle: u32) -> u32;
    }

    /// Exits with a CGI call's error code when it is not 0.
    fn check(what: &str, code: u32) {
        if code != 0 {
            eprintln!("{what}: error {code}");
            std::process::exit(code as i32);
        }
    }

    /// Reads a handle to its end with `read`.
    fn read_all(handle: u32, read: unsafe extern "C" fn(u32, *mut u8, u32, *mut u32) -> u32) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let mut n = 0;
            // SAFETY: buf and n outlive the call, which writes at most buf.len() bytes.
            check("read", unsafe { read(handle, buf.as_mut_ptr(), buf.len() as u32, &mut n) });
            if n == 0 {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    pub fn list() {
        let mut handle = 0;
        // SAFETY: handle outlives the call.
        check("cgi_list_exec", unsafe { cgi_list_exec(&mut handle) });
        println!("{}", read_all(handle, cgi_list_read));
        // SAFETY: plain value.
        check("cgi_close", unsafe { cgi_close(handle) });
    }

    pub fn call(command: &str, line_text: &str) {
        let request = format!(
            r#"{{"command": "{}", "args": ["arg1"], "envs": [{{"env_name": "GREETING", "env_val": "hi"}}]}}"#,
            command
        );
        let mut handle = 0;
        // SAFETY: the request and handle outlive the call.
        check("cgi_open", unsafe {
            cgi_open(request.as_ptr(), request.len() as u32, &mut handle)
        });
        let line = format!("{}\n", line_text);
        let mut n = 0;
        // SAFETY: as above.
        check("cgi_stdin_write", unsafe {
            cgi_stdin_write(handle, line.as_ptr(), line.len() as u32, &mut n)
        });
        print!("{}", read_all(handle, cgi_stdout_read));
        // SAFETY: plain value.
        check("cgi_close", unsafe { cgi_close(handle) });
    }
}

#[cfg(target_env = "p2")]
mod cgi {
    pub fn list() {
        eprintln!("no blockless_cgi in a component");
        std::process::exit(2);
    }

    pub fn call(_: &str, _: &str) {
        list()
    }
}

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
        "cgi-list" => cgi::list(),
        "cgi" => cgi::call(&rest[0], &rest[1]),
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
