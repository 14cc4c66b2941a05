fn main() -> std::process::ExitCode {
    twofold_api::main()
}
