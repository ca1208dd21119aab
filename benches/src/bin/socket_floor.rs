//! The floor under `tessera --api-sock PATH`'s start-up: a process that only binds and listens
//! on a unix socket at PATH, then waits to be killed. Spawn -> accepting for this program is
//! what process creation, exec and `bind` + `listen` cost on this host.

use std::os::unix::net::UnixListener;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: socket_floor PATH");
        std::process::exit(2);
    };
    let _listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("socket_floor: cannot bind {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    };
    loop {
        std::thread::park();
    }
}
