//! `tessera-init`: PID 1 of a Tessera guest, running its workload spec with the process runner.
//! Everything it does is in `guest_init::pid1`.

use guest_init::runner::process::ProcessRunner;

fn main() {
    guest_init::pid1::main(ProcessRunner);
}
