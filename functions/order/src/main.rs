#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_contracts::topology::Function::Order,
        saga_order::router,
    )
    .await
}
