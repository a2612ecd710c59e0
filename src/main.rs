//! The `syncjob` binary: everything is in the library; `cli` decides the
//! exit code.

fn main() -> std::process::ExitCode {
    syncjob::cli::main()
}
