#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_contracts::topology::Function::Janitor,
        saga_janitor::router,
    )
    .await
}
