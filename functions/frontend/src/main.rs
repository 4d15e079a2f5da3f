#[tokio::main]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_infra::topology::Function::Frontend,
        saga_frontend::router,
    )
    .await
}
