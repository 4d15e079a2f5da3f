#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_infra::topology::Function::Janitor,
        saga_janitor::router,
    )
    .await
}
