//! `saga`: run the order saga locally and operate it. The commands are in `saga::cmd`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga::cmd::main().await
}
