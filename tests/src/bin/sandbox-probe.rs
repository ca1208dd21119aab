//! What a hostile workload tries, one system call per subcommand, for the sandbox tests: prints
//! `allowed` (exit 0) or `refused: ERRNO` (exit 1). Static, so it runs in any image.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).and_then(|a| a.parse::<i32>().ok()).unwrap_or(1);
    // SAFETY: each call takes integers or a valid C string and touches no memory of ours.
    let rc = unsafe {
        match args.first().map(String::as_str) {
            Some("ptrace") => libc::ptrace(libc::PTRACE_ATTACH, arg(1), 0, 0) as i64,
            Some("init-module") => libc::syscall(libc::SYS_finit_module, 0, c"".as_ptr(), 0),
            Some("unshare") => i64::from(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)),
            Some("mount") => i64::from(libc::mount(
                c"none".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )),
            Some("bpf") => libc::syscall(libc::SYS_bpf, 0, 0, 0),
            _ => {
                eprintln!("usage: sandbox-probe ptrace PID | init-module | unshare | mount | bpf");
                std::process::exit(2);
            }
        }
    };
    match rc {
        -1 => {
            println!("refused: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        _ => println!("allowed"),
    }
}
