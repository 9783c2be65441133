fn main() -> std::process::ExitCode {
    cadenza_cli::main()
}
