fn main() -> std::process::ExitCode {
    syncjob::cli::main()
}
